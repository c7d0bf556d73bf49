"""The fast path's framing of a client's batch (speedups.unnamed_batch's, in C and its pure-Python
reference with its one-look recognition of the usual tail: Describe, Execute, Sync of the unnamed
portal) frames exactly as a walk of every header does, whatever the bytes."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helios_proxy.speedups import USUAL_TAIL, py_messages, py_unnamed_batch

try:
    from helios_proxy._speedups import unnamed_batch as c_unnamed_batch
except ImportError:  # (not built: no compiler)
    c_unnamed_batch = None


def c_messages(data):
    """The C framing: the first two of what unnamed_batch gives."""
    framed = c_unnamed_batch(data)
    return None if framed is None else framed[:2]

IMPLEMENTATIONS = [pytest.param(py_messages, id="python"),
                   pytest.param(c_messages, id="c", marks=pytest.mark.skipif(c_unnamed_batch is None,
                                                                             reason="the C helper is not built"))]

FAST = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))


def walk(data):
    """Every header read in turn (the reference)."""
    starts, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 5:
            return None
        length = struct.unpack_from("!I", data, pos + 1)[0]
        if length < 4 or pos + 1 + length > len(data):
            return None
        starts.append(pos)
        pos += 1 + length
    return starts, bytes(data[s] for s in starts)


def message(mtype, body):
    return mtype + struct.pack("!I", 4 + len(body)) + body


@pytest.mark.parametrize("messages", IMPLEMENTATIONS)
@FAST
@given(st.binary(max_size=40), st.binary(max_size=40), st.integers(-3, 3), st.integers(-3, 3))
def test_the_usual_tail_frames_as_a_walk_does(messages, parse, bind, parse_off, bind_off):
    p, b = message(b"P", parse), message(b"B", bind)
    # lengths a little off (a client's bytes are whatever they are): both framings agree
    p = p[:1] + struct.pack("!I", max(0, len(p) - 1 + parse_off)) + p[5:]
    b = b[:1] + struct.pack("!I", max(0, len(b) - 1 + bind_off)) + b[5:]
    data = p + b + USUAL_TAIL
    assert messages(data) == walk(data)


@pytest.mark.parametrize("messages", IMPLEMENTATIONS)
@FAST
@given(st.binary(max_size=80))
def test_any_bytes_frame_as_a_walk_does(messages, data):
    assert messages(data) == walk(data)
    data += USUAL_TAIL
    assert messages(data) == walk(data)


@pytest.mark.parametrize("messages", IMPLEMENTATIONS)
def test_a_usual_batch_is_five_messages(messages):
    data = message(b"P", b"\0select 1\0\0\0") + message(b"B", b"\0\0\0\0\0\0\0\0") + USUAL_TAIL
    assert messages(data) == ([0, 17, 30, 37, 47], b"PBDES")


BATCH_IMPLEMENTATIONS = [pytest.param(py_unnamed_batch, id="python"),
                         pytest.param(c_unnamed_batch, id="c", marks=pytest.mark.skipif(
                             c_unnamed_batch is None, reason="the C helper is not built"))]
UNNAMED = (message(b"P", b"\0select $1\0\0\0") + message(b"B", b"\0\0\0\0\0\1\0\0\0\0011\0\0")
           + message(b"D", b"P\0") + message(b"E", b"\0\0\0\0\0") + message(b"S", b""))


@pytest.mark.parametrize("unnamed_batch", BATCH_IMPLEMENTATIONS)
def test_an_unnamed_batch_is_told_from_a_named_one(unnamed_batch):
    starts, shape, nul = unnamed_batch(UNNAMED)
    assert shape == b"PBDES" and nul == 15 and UNNAMED[6:nul] == b"select $1"
    assert unnamed_batch(UNNAMED.replace(b"D\0\0\0\6P\0", b"D\0\0\0\6S\0"))[2] == 15  # (Describe of the statement)
    named = [message(b"P", b"s1\0select $1\0\0\0") + UNNAMED[18:],  # a named statement
             UNNAMED.replace(b"E\0\0\0\x09\0", b"E\0\0\0\x0ap\0"),  # a named portal
             UNNAMED.replace(b"D\0\0\0\6P\0", b"D\0\0\0\6X\0")]  # a Describe of neither
    for data in named:
        framed = unnamed_batch(data)
        assert framed is not None and framed[2] == -1, data
    assert unnamed_batch(UNNAMED[:-1]) is None
    bound = UNNAMED[18:]  # (Bind, Describe, Execute, Sync of the unnamed statement: not a named one's execution)
    assert unnamed_batch(bound)[1:] == (b"BDES", -1)


@pytest.mark.parametrize("unnamed_batch", BATCH_IMPLEMENTATIONS)
def test_a_named_statements_execution_is_told_where_its_name_ends(unnamed_batch):
    """Bind of the unnamed portal to a statement named, [Describe of the portal,] Execute of it,
    Sync (asyncpg, JDBC, pgbench -M prepared): the third is where the statement's name ends."""
    bind = message(b"B", b"\0stmt_1\0\0\0\0\1\0\0\0\0011\0\0")
    rest = message(b"E", b"\0\0\0\0\0") + message(b"S", b"")
    described = bind + message(b"D", b"P\0") + rest
    assert unnamed_batch(described)[1:] == (b"BDES", 12) and described[6:12] == b"stmt_1"
    assert unnamed_batch(bind + rest)[1:] == (b"BES", 12)
    for data in (bind.replace(b"\0stmt_1", b"pstmt_1", 1) + rest,  # a named portal
                 message(b"B", b"\0\0\0\0\0\0\0\0") + rest,  # the unnamed statement
                 bind + message(b"D", b"S\0") + rest,  # a Describe of the statement
                 bind + message(b"D", b"Pp\0") + rest,  # ... of a named portal
                 bind + message(b"E", b"p\0\0\0\0\0") + message(b"S", b"")):  # an Execute of one
        assert unnamed_batch(data)[2] == -1, data


@pytest.mark.skipif(c_unnamed_batch is None, reason="the C helper is not built")
@FAST
@given(st.binary(max_size=30), st.binary(max_size=8), st.binary(max_size=8), st.booleans())
def test_a_named_execution_is_the_references_on_any_batch(bind, describe, execute, described):
    data = (message(b"B", bind) + (message(b"D", describe) if described else b"")
            + message(b"E", execute) + message(b"S", b""))
    assert c_unnamed_batch(data) == py_unnamed_batch(data)
    for name in (b"\0s\0", b"\0\0", b"p\0s\0"):  # (a named statement's, the unnamed one's, a named portal's)
        data = (message(b"B", name + bind) + (message(b"D", b"P" + describe) if described else b"")
                + message(b"E", execute) + message(b"S", b""))
        assert c_unnamed_batch(data) == py_unnamed_batch(data)


@pytest.mark.skipif(c_unnamed_batch is None, reason="the C helper is not built")
@FAST
@given(st.binary(max_size=30), st.binary(max_size=30), st.binary(max_size=8), st.binary(max_size=8),
       st.booleans())
def test_unnamed_batch_is_the_references_on_any_batch(parse, bind, describe, execute, described):
    data = (message(b"P", parse) + message(b"B", bind) + (message(b"D", describe) if described else b"")
            + message(b"E", execute) + message(b"S", b""))
    assert c_unnamed_batch(data) == py_unnamed_batch(data)
    assert c_unnamed_batch(data[:-3]) == py_unnamed_batch(data[:-3])
