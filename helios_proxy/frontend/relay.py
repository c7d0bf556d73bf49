"""The server-to-client direction of a lease: move the server's answers to the client.

`ServerStream` walks what the server sends, message headers only as far as needed: ReadyForQuery
(transaction status, answers still owed, the lease's end by pool mode), ErrorResponse,
ParameterStatus, and whatever the response plan (plan.py) must see whole to splice the proxy's
own answers in or cut the server's hidden ones out. DataRow and CopyData, the bulk, pass unread.

Two pumps feed it:
- `CallbackPump` (plain sockets, the usual case): a read watcher on gevent's loop calls it when
  the server's bytes arrive; it reads, walks and writes without a greenlet switch per event, and
  stops reading while the client's socket is full (sockets.Writer), so a slow client costs no
  memory. What may wait (ending a lease that must read settings back, plugins' on_query_complete)
  goes to a worker greenlet (jobs.py).
- a greenlet pump, for TLS on either side (an SSL socket may hold decrypted bytes its descriptor
  does not show, and its writes cannot be retried byte-exact from a callback).
"""
import logging
import time
from time import monotonic
import weakref

import gevent
from gevent.hub import Waiter

from ..analytics import BATCH
from ..errors import CONNECTION_FAILURE, DECODING_ERRORS, ProtocolViolation
from ..jobs import JOBS
from ..plugins.actions import Outcome
from ..pool.lease import Lease, ends_here
from ..protocol import codec, messages as m
from ..protocol.framing import StreamScanner
from .plan import ENDS, HIDE, PLAIN
from ..continuity import replay
from ..sockets import call_soon, plain, recv, wake_when_readable
from ..speedups import last_tag, read, table, whole_answer

log = logging.getLogger(__name__)
READY, PARAMETER_STATUS, ERROR = m.READY_FOR_QUERY[0], m.PARAMETER_STATUS[0], m.ERROR_RESPONSE[0]
COMPLETE = m.COMMAND_COMPLETE[0]
FATAL = b"SFATAL\0"  # an ErrorResponse body that begins with severity FATAL
NOTICE = m.NOTICE_RESPONSE[0]  # (with SQLSTATE 57P0x: a server's warning that it ends the connection)
# Every message but DataRow and CopyData (the bulk of the bytes) is seen whole by the plan.
WANTS = frozenset(range(256)) - {m.DATA_ROW[0], m.COPY_DATA[0]}
EVERYTHING = frozenset(range(256))  # while the proxy's own Query is answered
# What the answer to a plain Query may hold for whole() to take it at once (any other message,
# an ErrorResponse, a notice, a ParameterStatus, COPY..., is feed()'s).
# whole(): the usual messages of an answer before its ReadyForQuery (no error, notice, copy...);
# STOPS[plain entry]: the messages the walk stops at, to see what comes (the entry's last, or unusual),
# as speedups.whole_answer's tables
PLAIN_MIDDLE = frozenset(b"TDCI123nst")
MIDDLE = table(PLAIN_MIDDLE)
STOPS = {entry: table(EVERYTHING - (PLAIN_MIDDLE - ENDS[kind])) for kind, entry in PLAIN.items()}
ENDED_BY_READY = frozenset(entry for kind, entry in PLAIN.items() if READY in ENDS[kind])  # (Query, Sync)


class ServerClosed(ConnectionResetError):
    """The server closed the connection cleanly (EOF): everything it sent before has arrived."""


class ServerStream:
    """The server's side of one lease, fed as it arrives."""
    __slots__ = ("session", "server", "scanner", "held", "last_tag", "last_error")

    def __init__(self, session, server=None):
        self.session, self.server = session, server
        self.scanner = StreamScanner(WANTS)
        self.held = b""  # trailing bytes of a message the plan must see whole, not complete yet
        self.last_tag = self.last_error = None  # of the answer in progress (plugins' on_query_complete)

    def reset(self, server):
        """Serve the next lease (a session's stream is reused: one object less per transaction)."""
        self.server, self.held, self.last_tag, self.last_error = server, b"", None, None
        scanner = self.scanner
        if scanner.skip or scanner.head or scanner.body_type is not None:  # (not scanner.at_boundary())
            self.scanner = StreamScanner(WANTS)

    def feed(self, data):
        """(bytes for the client, does the lease end here?, answers complete [(ctx, tag, error)]).
        Walks the server's messages by their headers: each is told to the plan, which may cut it
        out or add the proxy's own answers after it; a cache miss's fill takes it; at ReadyForQuery
        the answer is complete (analytics, plugins), the watchers see it and the lease may end."""
        session, plan = self.session, self.session.plan
        on_message, journal, fill = plan.on_message, session.journal, self.fill_of(session)
        found = self.scanner.feed(data)
        if journal is not None:
            journal.chunk()
        shift = len(self.held)
        if shift:
            data, self.held = self.held + data, b""
        sent, out, release, answered = 0, [], False, []
        for mtype, body, end in found:
            end += shift
            if journal is not None and (mtype == ERROR and (body.startswith(FATAL) or b"\0VFATAL\0" in body)
                                        or mtype == NOTICE and b"\0C57P0" in body):
                journal.fatal_error(data, end - 5 - len(body), data[end - 5 - len(body):end])
                drop, extra = HIDE, b""  # the server is going: held back, the replay decides
            else:
                drop, extra = on_message(mtype, body)
            if drop or extra:  # edit the stream: cut this message out, or add after it
                out.append(data[sent:end - 5 - len(body) if drop else end])
                out.append(extra)
                sent = end
                if drop is HIDE:  # not the client's (nor in the journal's checksum), nor counted as its answer
                    self.hidden(mtype, body, data, end)
                    continue
            if fill is not None and not drop and fill.take(mtype, data[end - 5 - len(body):end], body):
                session.cache_state.fill = fill = None  # (a cache miss's answer, as the client got it: stored)
            if mtype == READY:
                release = self.ready(body, drop, data, end, answered)
            elif mtype == ERROR:
                self.error(body)
            elif mtype == PARAMETER_STATUS:
                self.parameter(body)
            elif mtype == COMPLETE and plan.completions is not None:
                self.last_tag = body
        return self.edited(data, sent, out, journal), release, answered

    def ready(self, body, drop, data, end, answered):
        """A ReadyForQuery: a query's answer complete (analytics, plugins), the watchers, the journal;
        whether the lease ends here."""
        session, server = self.session, self.server
        plan = session.plan
        server.tx_status = body
        if body == b"I":
            session.counters.transactions += 1
        if drop:  # the proxy's own Sync: not one the client counts on
            plan.own_ready()
        else:
            entry = plan.answered()
            if plan.completions is not None:
                self.completed(entry, body, answered)
        for watcher in session.proxy.at_ready:  # (built once: answer_watchers.py)
            watcher(session, body)
        release = ends_here(session, server)
        journal = session.journal
        if journal is not None:
            journal.ready(data, end, release or body == b"I" and not plan.owes())  # (released: owes nothing)
        return release

    def whole(self, data):
        """The common case at once: data is the whole answer to what the plan holds, every entry
        plain (a Query, or an extended batch up to its Sync: no message of the proxy's own, nothing
        cut), only the usual messages in it (ParseComplete, BindComplete, RowDescription, NoData,
        DataRow, CommandComplete...: no error, notice or ParameterStatus) and one ReadyForQuery at
        its end, with nothing else watching; it goes to the client as it came. (Does the lease end
        here?, answers complete), as feed() tells them, or None when feed() must walk it."""
        session = self.session
        plan = session.plan
        entries = plan.entries
        if (plan.outstanding != 1 or plan.hidden or plan.skipping or self.held or plan.in_extended
                or plan.streaming or not entries or session.proxy.at_ready
                or self.scanner.skip):  # (skip: the chunk begins inside a DataRow; a partial header is held)
            return None
        cache_state = session.cache_state
        if cache_state is not None and cache_state.fill is not None:
            return None
        # a ReadyForQuery ends the chunk, every message before it of the usual kinds, ending its
        # entry's answer in turn, every entry the usual one of its kind, the last one a Query's or
        # a Sync's (else None: the answer goes on in the next chunk, or ends otherwise)
        status = whole_answer(data, entries, STOPS, MIDDLE, ENDED_BY_READY)
        if status is None:
            return None
        self.server.tx_status = plan.status = status
        entries.clear()
        if plan.completions is None:  # (plan.answered(), inline: nothing owed now)
            plan.outstanding, answered = 0, None
        else:  # (analytics, plugins' on_query_complete: as feed() notes them)
            entry, answered = plan.answered(), []
            self.last_tag = last_tag(data, len(data) - 6)  # (its ReadyForQuery's start)
            self.completed(entry, status, answered)
            analytics = session.proxy.analytics
            if analytics is not None and analytics.pending and (analytics.timer is None
                                                                  or len(analytics.pending) >= BATCH):
                analytics.tend()
        # ends_here(), inline: the plan owes nothing now and streams nothing (checked above)
        journal = session.journal
        if status == b"I":
            session.counters.transactions += 1
            release = session.identity.pooled and not session.slot.pinned and session.closing is None
            if journal is not None:  # (journal.answered()'s clean case: one call less)
                journal.checkpoint(len(data))
        else:
            release = False
            if journal is not None:
                journal.answered(data, False)
        return release, answered

    def fill_of(self, session):
        """The cache miss whose answer is being stored, if any; the scanner shows every message
        whole while the proxy's own Query is answered (its row must be seen) or a fill takes it."""
        cache_state = session.cache_state
        fill = cache_state.fill if cache_state is not None else None
        if session.plan.hidden or fill is not None:
            self.scanner.wanted = EVERYTHING
        elif self.scanner.wanted is EVERYTHING:
            self.scanner.wanted = WANTS
        return fill

    def hidden(self, mtype, body, data, end):
        """A message the proxy cut out as not the client's: out of the journal's checksum too; its
        own Sync's ReadyForQuery still tells the server's state."""
        journal = self.session.journal
        if journal is not None:
            journal.skip(data, end - 5 - len(body), end)
        if mtype == READY:
            self.server.tx_status = body
            self.session.plan.own_ready()

    def edited(self, data, sent, out, journal):
        """What goes to the client: the edits made, a partial message held back for the next
        chunk; analytics adds up the answers noted (later, or now when enough wait)."""
        analytics = self.session.proxy.analytics
        if analytics is not None and analytics.pending and (analytics.timer is None or len(analytics.pending) >= BATCH):
            analytics.tend()
        partial = self.scanner.partial()
        stop = len(data) - partial
        if journal is not None:  # (held bytes are hashed when they go out, with the next chunk)
            journal.chunk_end(data, stop)
        if partial:
            self.held = data[stop:]
        if out:
            out.append(data[sent:stop])
            return b"".join(out)
        if sent or partial:
            return data[sent:stop]
        return data

    def completed(self, entry, body, answered):
        """A ReadyForQuery with answers watched: a query's answer complete (entry) is noted for
        analytics and for plugins' on_query_complete; the next answer's tag and error start afresh."""
        session = self.session
        proxy = session.proxy
        if entry is not None:
            if proxy.analytics is not None and entry.analyze:
                proxy.analytics.pending.append((session, entry, self.last_tag, self.last_error, self.server.node.name,
                                                body, monotonic()))
            if proxy.plugins.complete_impls:
                answered.append((entry, self.last_tag, self.last_error))
        self.last_tag = self.last_error = None

    def error(self, body):
        session, server = self.session, self.server
        session.proxy.router.count(server.node, "errors")
        for watcher in session.proxy.at_error:
            watcher(session, server, body)
        if session.plan.completions is not None:
            self.last_error = codec.parse_fields(body).get("C")

    def parameter(self, body):
        """A ParameterStatus: whatever statement caused it, a setting changed (read back at the
        lease's end; a session pooling journal notes it for a session migrate)."""
        session = self.session
        name, value = codec.parse_parameter_status(body)
        self.server.params[name] = value
        session.settings.changed()
        if session.journal is not None and not session.identity.pooled:
            session.journal.note_change()


class CallbackPump:
    """Moves a lease's server bytes from the server connection's read watcher (plain sockets on
    both sides). One per session, serving its leases one after the other."""
    __slots__ = ("session", "lease", "server", "stream", "writer", "running", "paused", "callback", "resumer",
                 "clean")

    def __init__(self, session):
        self.session, self.lease, self.server = session, None, None
        self.stream = ServerStream(session)
        self.writer = session.writer
        self.running = self.paused = False
        self.callback, self.resumer = self.readable, self.resume  # (bound once)
        self.clean = False  # the last bytes it took were an answer whole() took: its stream holds nothing of it

    def begin(self, lease, go_on=False):
        """Serve lease; go_on: its server was replaced by a replay, the stream goes on where it was."""
        server = lease.server
        self.lease, self.server = lease, server
        if go_on or self.clean:
            self.stream.server = server
        else:
            self.stream.reset(server)
        self.running, self.paused = True, False
        if server.watcher is None:
            server.watch(self.callback)
        else:  # (armed for the connection's life: server.watch(), without a call more per transaction)
            server.on_readable = self.callback
        return self

    def readable(self, data=None):
        """The server's bytes (read now; data: already read, a replay's) to the client, and the
        lease ends where its pool mode says."""
        server = self.server
        try:
            if data is None:
                try:
                    data = read(server.raw.fileno())  # (speedups.read: what the socket has)
                except (BlockingIOError, InterruptedError):
                    return
                if not data:
                    raise ServerClosed("server closed the connection")
            session = self.session
            session.counters.bytes_out += len(data)
            whole = self.stream.whole(data)  # (the common answer, at once)
            if whole is None:
                self.clean = False
                out, release, answered = self.stream.feed(data)
            else:
                self.clean = True
                out = data
                release, answered = whole
            if release:
                lease = self.lease
                # stop(), as it is here (running, not paused: a paused pump is not called)
                self.running = False
                server.on_readable = None
                self.lease = self.server = None
                session.slot.ended(lease, out, True)
            elif out:
                self.writer.write(out)
                if self.writer.pending:  # (its backlog) the client reads slower: wait until it took it all
                    self.paused = True
                    server.pause()
                    self.writer.on_drained = self.resumer
            if answered:  # after the answer went to the client
                completed(session, server, answered, JOBS.submit)
        except Exception as e:  # a bug costs this session, never the loop
            self.fail(e)

    def rests_on(self, lease):
        """Whether it serves lease, not held back by the client's backlog, its server not broken,
        and the last bytes it took were an answer whole() took (the fast path's at-rest shortcut
        inside a transaction block)."""
        return self.lease is lease and self.clean and self.running and not self.paused and not lease.server.broken

    def resume(self):
        if self.paused:
            self.paused = False
            self.server.resume()

    def stop(self, block=True):
        if self.running:
            self.running = self.clean = False
            self.server.on_readable = None
            if self.paused:  # (the watcher stays armed for the connection's next use)
                self.resume()
            if self.writer.on_drained is self.resumer:
                self.writer.on_drained = None
            self.lease = self.server = None

    def fail(self, error):
        server, lease = self.server, self.lease
        self.stop()
        JOBS.submit(lost, self.session, server, error, lease, self.stream)  # (it may wait: not from the loop)


def start(session, lease):
    """The pump for a lease: callbacks on plain sockets, a greenlet where TLS is involved."""
    if lease.server.raw is not None and session.writer.raw is not None:  # (raw: the server's socket is plain)
        slot = session.slot
        pump = slot.pump
        if pump is None:
            pump = slot.pump = CallbackPump(session)
        return pump.begin(lease)
    return GREENLETS.start(session, lease)


Lease.starter = start  # (the pool layer starts a lease's pump through it: pool/lease.py)


def resume(session, lease, stream, first, out=b""):
    """Go on relaying a lease whose server a replay replaced (continuity/replay.py): the client gets
    out, then what follows `first` (the new server's bytes beyond what the client already had),
    through the same stream, so the client's stream goes on byte for byte where it stopped."""
    if out:
        session.writer.write(out)
    if plain(lease.server.sock) and session.writer.raw is not None and stream is getattr(
            session.slot.pump, "stream", None):
        callbacks = lease.pump = session.slot.pump.begin(lease, go_on=True)
        if first:
            callbacks.readable(first)  # (a failure: its own, callbacks.fail)
        return
    lease.pump = GreenletPump(gevent.spawn(pump, session, lease, stream, first), GREENLETS)


# --- the greenlet pump (TLS) -------------------------------------------------------------------
def pump(session, lease, stream=None, first=b""):
    """Relay until the lease ends (pooling: True) or the server is lost (False); never raises.
    (stream, first: go on after a replay, continuity/replay.py.)"""
    server = lease.server
    if stream is None:
        stream = ServerStream(session, server)
    else:
        stream.server = server
    sock = server.sock
    try:
        while True:
            data, first = (first, b"") if first else (recv(sock), b"")
            if not data:
                raise ServerClosed("server closed the connection")
            session.counters.bytes_out += len(data)
            out, release, answered = stream.feed(data)
            if not release:
                if out:
                    session.send(out)
                if answered:  # after the answer went to the client
                    completed(session, server, answered)
                continue
            lease.pump = None
            session.slot.ended(lease, out)
            if answered:
                completed(session, server, answered)
            return True  # the lease ended and the session let go of this pump
    except Exception as e:
        lost(session, server, e, lease, stream)


class Parked:
    """An idle pump greenlet: the Waiter it sleeps on, and the watcher that will wake it."""
    __slots__ = ("greenlet", "waiter", "watcher")

    def __init__(self, greenlet):
        self.greenlet, self.waiter, self.watcher = greenlet, None, None


class GreenletPump:
    """A running greenlet pump, as the lease holds it."""
    __slots__ = ("greenlet", "pumps")

    def __init__(self, greenlet, pumps):
        self.greenlet, self.pumps = greenlet, pumps

    def stop(self, block=True):
        """The kill is delivered later, by the loop: by then the pump may have ended that lease
        and parked, or taken another client's lease; a condemned pump dies instead of parking,
        so the kill can reach no other client."""
        self.pumps.condemned.add(self.greenlet)
        self.greenlet.kill(block=block)


class Pumps:
    """Reused pump greenlets (a new greenlet costs an mmap + munmap pair for its stack); a pump
    that is killed (session end) is simply not reused. A parked pump is handed its next lease by
    the server socket itself: it wakes once, when the server's first answer is there."""

    def __init__(self):
        self.idle = []  # Parked
        self.condemned = weakref.WeakSet()  # pumps a session stopped: they die, never park again

    def start(self, session, lease):
        parked = None
        while self.idle and parked is None:
            parked = self.idle.pop()
            if parked.greenlet.dead:  # never hand a lease to a dead pump (it would hang its client)
                parked = None
        if parked is None:
            return GreenletPump(gevent.spawn(self._work, session, lease), self)
        sock = lease.server.sock
        if plain(sock):
            parked.watcher = wake_when_readable(sock, parked.waiter.switch, (session, lease))
        else:
            call_soon(parked.waiter.switch, (session, lease))
        return GreenletPump(parked.greenlet, self)

    def _work(self, session, lease):
        parked = Parked(gevent.getcurrent())
        while True:
            if not pump(session, lease) or parked.greenlet in self.condemned:
                return  # the session may still hold (and kill) this greenlet: never reuse it
            session = lease = None  # hold no references while idle
            parked.waiter = Waiter()
            self.idle.append(parked)
            try:
                session, lease = parked.waiter.get()
            except BaseException:  # killed while parked (a kill meant for the lease it just ended)
                if parked in self.idle:
                    self.idle.remove(parked)
                raise
            finally:  # woken, or killed while parked: the watcher must not call it again
                if parked.watcher is not None:
                    parked.watcher.stop()
                    parked.watcher = None


GREENLETS = Pumps()


def completed(session, server, answered, submit=None):
    """Queries whose answers are complete (analytics noted them in ServerStream.feed): plugins'
    on_query_complete runs through submit (a worker greenlet, from a loop callback)."""
    proxy = session.proxy
    if proxy.plugins.complete_impls:
        for entry in answered:
            if submit is None:
                report(session, server, *entry)
            else:
                submit(report, session, server, *entry)


def report(session, server, ctx, tag, error):
    """on_query_complete for the plugins: how long, what the server answered."""
    tag = codec.read_cstr(tag, 0)[0] if tag else None
    rows = int(tag.rsplit(" ", 1)[1]) if tag and tag.rsplit(" ", 1)[-1].isdigit() else None
    session.proxy.plugins.query_complete(ctx, Outcome(time.monotonic() - ctx.started, tag, rows, error,
                                                      server.node.name))


def failure(session, e):
    """Why relaying a server's bytes failed, in one line (a traceback only for our own bug)."""
    if isinstance(e, ProtocolViolation):
        return f"protocol violation from server: {e.message}"
    if isinstance(e, DECODING_ERRORS):  # a malformed message from the server
        return f"protocol violation from server: malformed message ({e})"
    if isinstance(e, OSError):
        return str(e)
    log.error("%r: relaying from the server failed", session, exc_info=e)  # (not raised here: a callback's)
    return "internal error"


def lost(session, server, error, lease=None, stream=None):
    """Relaying the server's bytes failed (error): the connection is lost. Its session goes on on
    another server if the connection itself broke and its journal allows (continuity/replay.py),
    else it ends with the connection error."""
    why = failure(session, error)
    server.broken = True
    if session.cache_state is not None:
        session.cache_state.fill = None  # (a cache miss in flight is not stored)
    log.warning("%r: server %s lost: %s", session, server.node.name, why)
    breakers = session.proxy.router.breakers
    if breakers.enabled:  # a lost connection is the node's failure (an error a statement raised is not)
        breakers.failure(server.node, f"connection lost: {why}")
        if lease is not None:
            lease.sick = True  # (its end is not counted a success)
    session.proxy.router.suspect(server.node, why)  # the node may be down: the health checker looks now
    journal = session.journal
    if journal is not None and isinstance(error, OSError) and lease is not None and lease is session.slot.lease:
        journal.note_lost(isinstance(error, ServerClosed))
        try:
            if replay.recover(session, lease, stream):  # on a new server, as if nothing happened
                return
        except Exception:  # a bug costs this session (ended below), never a hung client
            log.exception("%r: replay failed", session)
        if journal.fatal:  # what the server said before it went (held back for the replay)
            session.writer.write(journal.fatal)
            journal.fatal = None
    if session.closing is None:
        session.terminate("server closed the connection unexpectedly", sqlstate=CONNECTION_FAILURE)
