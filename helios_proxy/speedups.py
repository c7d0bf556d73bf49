"""The fast path's byte walks (issue 33) and its loop callbacks' reads and writes, in C where
helios_proxy/_speedups.c was built, else in Python: the py_ functions here are the reference, the C
ones do exactly what they do; `whole_answer` (with `walk_answer`), `query_key`, `key_of`,
`unnamed_batch`, `read`, `write`, `read_cstr` (protocol/codec.py's), `last_tag`, `scan`
(protocol/framing.py's) and `follow` are the ones that run (py_messages: the framing
unnamed_batch starts with).

The C module is optional: `pip install -e .` builds it where a C compiler is found and goes on
without it where none is (setup.py). HELIOS_PURE_PYTHON=1 in the environment chooses the Python
functions (as psycopg, msgpack and gevent let their users choose). `COMPILED` says which run.
tests/unit/test_speedups.py runs both on the same inputs.
"""
import os
from struct import Struct

# length_of(data, pos)[0]: the length field of the message at data[pos] (5 bytes there at least),
# unsigned; unpack_int32's signed (protocol/framing.py's too: it imports scan from here). (One C
# call: cheaper than int.from_bytes(data[pos + 1:pos + 5], "big"), a slice and a method looked up
# on the type at every call, which CPython 3.11 does not specialize.)
length_of = Struct("!xI").unpack_from
unpack_int32 = Struct("!i").unpack_from

# The loop callbacks' reads (frontend/relay.py CallbackPump.readable, frontend/fastpath.py
# FastPath.readable) take what a non-blocking socket has, up to READ_SIZE bytes, from its kernel
# socket's descriptor (`raw.fileno()`: -1 once closed, EBADF, never another connection's bytes):
# BlockingIOError when nothing has arrived, b"" at EOF, as os.read. In Python (py_read) a read asks
# for FIRST_READ bytes first: os.read allocates the bytes object of the size asked and shrinks it
# to what came; up to 479 bytes (512 with its header) CPython's small-object allocator serves it,
# above that malloc does (~650 instructions more per read: the common request and answer are a few
# dozen bytes); a read that filled it takes the rest at once (one system call more, only for a
# larger message). The C read reads into a buffer of its own, and neither it nor the C write gives
# up the GIL: the descriptor never makes them wait, and giving the GIL up and taking it back cost
# more than the system call (~500 instructions).
READ_SIZE = 1 << 16
FIRST_READ = 479


def py_read(fd):
    """os.read(fd, READ_SIZE), FIRST_READ first (an error or EOF after FIRST_READ bytes is the next
    read's to see: the bytes in hand go on first)."""
    data = os.read(fd, FIRST_READ)
    if len(data) == FIRST_READ:
        try:
            data += os.read(fd, READ_SIZE)
        except OSError:
            pass
    return data


py_write = os.write


def py_walk_answer(data, pos, tail, entries, k, stops, middle):
    """The index of the entry (of entries, a response plan's) whose answer ends at data[tail] (a
    ReadyForQuery there: relay.ServerStream.whole), walking the messages from data[pos] (where
    entries[k]'s answer goes on) by their headers: an entry's answer ends at a message its table in
    stops ({entry: 256 bytes}) names, which must be a usual one (middle[type]) and leaves the next
    entry's answer to begin. -1 where the walk must stop: an entry stops has no table for (not a
    usual one), a message that is not usual, an answer past the last entry, a message that crosses
    tail. A header it must read beyond data raises (the C one: ValueError)."""
    last = len(entries) - 1
    table = stops.get(entries[k])
    if table is None:
        return -1
    while pos < tail:
        mtype = data[pos]
        if table[mtype]:
            if not middle[mtype] or k == last:
                return -1
            k += 1
            table = stops.get(entries[k])
            if table is None:
                return -1
        pos += 1 + length_of(data, pos)[0]
    return k if pos == tail else -1


READY_HEAD = b"Z\0\0\0\x05"  # a ReadyForQuery's type and length (its status follows)


def py_whole_answer(data, entries, stops, middle, ended):
    """The status of data's final ReadyForQuery (bytes: b"I", b"T" or b"E") if data is the whole
    answer to entries (a response plan's): a ReadyForQuery ends it, and the walk from its start
    (py_walk_answer) ends the last entry's answer right before it, an entry of ended (one a
    ReadyForQuery ends: a Query's, a Sync's); else None."""
    tail = len(data) - 6
    if tail < 0 or data[tail:-1] != READY_HEAD or not entries:
        return None
    last = len(entries) - 1
    if py_walk_answer(data, 0, tail, entries, 0, stops, middle) != last or entries[last] not in ended:
        return None
    return data[-1:]


def py_query_key(data, table):
    """data.translate(table) if data is one whole simple Query (its length field, its final NUL,
    no NUL inside its text), else None. (The C one gives back the object it made for an equal key
    lately, one of 256 kept by a hash of a few of their bytes: the fast path's set lookups then take
    its hash as it was kept, and no object is made.)"""
    n = len(data)
    if n < 6 or length_of(data, 0)[0] != n - 1 or data[-1] != 0 or data.find(0, 5, n - 1) >= 0:
        return None
    return data.translate(table)


def py_key_of(data, start, end):
    """data[start:end] (an unnamed batch's text, the fast path's key: the C one gives back an equal
    key it made lately, as query_key does)."""
    if not 0 <= start <= end <= len(data):
        raise ValueError("key_of: 0 <= start <= end <= len(data)")
    return data[start:end]


PARSE, BIND = ord("P"), ord("B")
PORTAL = ord("P")  # (a Describe's kind: of a portal)
# The usual end of an unnamed batch (pgbench -M extended, psycopg 3, JDBC...): Describe of the unnamed
# portal, Execute of it with no row limit, Sync
USUAL_TAIL = b"D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04"
USUAL_SIZE = len(USUAL_TAIL) + 10  # (and a Parse and a Bind of 5 bytes at least each before it)


def py_messages(data):
    """([where each message starts], their types as bytes) of data, whole messages only (a length
    field of 4 at least, none beyond data); else None. (The usual tail, USUAL_TAIL, is recognized
    in one look: only the Parse and Bind before it are walked.)"""
    n = len(data)
    if n > USUAL_SIZE and data[0] == PARSE and data.endswith(USUAL_TAIL):
        bind = 1 + length_of(data, 0)[0]
        if 5 <= bind <= n - 27 and data[bind] == BIND and bind + 1 + length_of(data, bind)[0] == n - 22:
            return [0, bind, n - 22, n - 15, n - 5], b"PBDES"
    starts, shape, pos = [], bytearray(), 0
    while pos < n:
        if n - pos < 5:
            return None
        end = pos + 1 + length_of(data, pos)[0]
        if end - pos < 5 or end > n:
            return None
        starts.append(pos)
        shape.append(data[pos])
        pos = end
    return starts, bytes(shape)


UNNAMED_BATCHES = (b"PBDES", b"PBES")  # (Describe: of the portal or statement)
NAMED_EXECUTIONS = (b"BDES", b"BES")  # (Describe: of the portal)


def py_unnamed_batch(data):
    """py_messages(data) and, third, where the Parse's text ends (its NUL) if data is one unnamed
    extended batch (Parse, Bind, [Describe,] Execute, Sync: the unnamed statement and portal, a
    Describe of either), or where the statement's name ends (its NUL) if data is one named
    statement's execution (Bind of the unnamed portal to a statement named, [Describe of the
    portal,] Execute of it, Sync), else -1; None if data is not whole messages."""
    framed = py_messages(data)
    if framed is None:
        return None
    starts, shape = framed
    nul = -1
    if shape in NAMED_EXECUTIONS:
        after, execute = starts[1], starts[-2]
        end = data.find(0, 6, after)
        if (data[5] == 0 and end > 6 and data[execute + 5] == 0
                and (len(starts) == 3 or data[after + 5] == PORTAL and data[after + 6] == 0)):
            nul = end
    elif shape in UNNAMED_BATCHES:
        bind, execute = starts[1], starts[-2]
        nul = data.find(0, 6, bind)
        if (data[5] != 0 or data[bind + 5] != 0 or data[bind + 6] != 0 or data[execute + 5] != 0
                or len(starts) == 5 and (data[starts[2] + 5] not in b"PS" or data[starts[2] + 6] != 0)):
            nul = -1  # (a named statement or portal)
    return starts, shape, nul


COMPLETE = ord("C")  # a CommandComplete's type


def py_scan(data, wanted, max_size):
    """([(type, body, end)], pos): the whole messages at the start of data (bytes-like) whose type
    is in wanted (a set of ints), end just past each, and where the walk stopped: at the first
    message not whole in data, or whose length is out of range (< 4 or > max_size: the caller's
    error to raise). protocol/framing.py StreamScanner.feed's walk while it holds nothing of a
    message from the chunk before."""
    out, pos, n = [], 0, len(data)
    while n - pos >= 5:
        mtype, length = data[pos], unpack_int32(data, pos + 1)[0]
        if length < 4 or length > max_size or length > n - pos - 1:
            break
        end = pos + 1 + length
        if mtype in wanted:
            out.append((mtype, bytes(data[pos + 5:end]), end))
        pos = end
    return out, pos


def py_last_tag(data, stop):
    """The tag (with its NUL) of the last CommandComplete in the whole messages of data[:stop], or
    None (relay.ServerStream.whole: an answer's, for analytics and plugins' on_query_complete). A
    header it must read beyond data, or a tag without its NUL, raises (the C one: ValueError)."""
    pos, tag = 0, None
    while pos < stop:
        if data[pos] == COMPLETE:
            tag = pos
        pos += 1 + length_of(data, pos)[0]
    return None if tag is None else data[tag + 5:data.index(0, tag + 5) + 1]


def py_read_cstr(buf, pos):
    """(str, next_pos) for the NUL-terminated string starting at pos of buf (bytes, bytearray), decoded as
    UTF-8 with replacement; ValueError when no NUL follows."""
    end = buf.index(b"\0", pos)
    return bytes(buf[pos:end]).decode("utf-8", "replace"), end + 1


def py_follow(obj, name):
    """A callable that calls whatever obj.<name> holds when it is called (nothing when None): a
    server connection's read watcher's callback, which follows the connection's listener of the
    moment (a lease's pump, its pool's idle check; backend/connection.py). The C one is an object
    without a Python frame of its own (~400 instructions less per answer)."""
    def call():
        callback = getattr(obj, name)
        if callback is not None:
            callback()
    return call


def table(types):
    """The 256-byte table walk_answer() takes: 1 for each message type in types, else 0."""
    return bytes(1 if t in types else 0 for t in range(256))


walk_answer, query_key, unnamed_batch, read, write = py_walk_answer, py_query_key, py_unnamed_batch, py_read, py_write
whole_answer, read_cstr, key_of, follow, last_tag = py_whole_answer, py_read_cstr, py_key_of, py_follow, py_last_tag
scan = py_scan
COMPILED = False
if not os.environ.get("HELIOS_PURE_PYTHON"):
    try:
        from . import _speedups
    except ImportError:  # (not built: no compiler where it was installed)
        pass
    else:
        walk_answer, query_key, unnamed_batch = _speedups.walk_answer, _speedups.query_key, _speedups.unnamed_batch
        read, write, read_cstr = _speedups.read, _speedups.write, _speedups.read_cstr
        whole_answer, key_of, follow, last_tag = _speedups.whole_answer, _speedups.key_of, _speedups.follow, _speedups.last_tag
        scan = _speedups.scan
        COMPILED = True
