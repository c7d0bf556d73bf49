"""The server-to-client direction of a session: stream the server's replies to the client.

Runs in its own greenlet per server lease. It tracks ReadyForQuery (transaction status, replies
outstanding) and ParameterStatus, splices proxy answers in exactly before or after a given
ReadyForQuery, and, in transaction/statement pooling, ends the lease when the server goes idle.
"""
import logging
import time
import weakref

import gevent
from gevent import get_hub
from gevent.hub import Waiter

from ..errors import CONNECTION_FAILURE, DECODING_ERRORS, ProtocolViolation
from ..plugins.actions import Outcome
from ..pool.prepared import invalidate, stale_plan
from ..protocol import codec, messages as m
from ..protocol.framing import StreamScanner
from ..sockets import plain, recv

log = logging.getLogger(__name__)
READY, PARAMETER_STATUS, ERROR = m.READY_FOR_QUERY[0], m.PARAMETER_STATUS[0], m.ERROR_RESPONSE[0]
COMPLETE = m.COMMAND_COMPLETE[0]
# Every message but DataRow and CopyData (the bulk of the bytes) is seen whole by the plan.
WANTS = frozenset(range(256)) - {m.DATA_ROW[0], m.COPY_DATA[0]}


def pump(session, server):
    """Relay until the server is released (pooling: True) or lost (False); never raises."""
    scanner = StreamScanner(WANTS)
    sock, send, on_message = server.sock, session.send, session.plan.on_message
    router = session.proxy.router
    held = b""  # trailing bytes of a message the plan must see whole, not complete yet
    completions, last_tag, last_error = session.completions, None, None  # plugins' on_query_complete
    try:
        while True:
            data = recv(sock)
            if not data:
                raise ConnectionResetError("server closed the connection")
            session.bytes_out += len(data)
            found = scanner.feed(data)
            shift = len(held)
            if shift:
                data, held = held + data, b""
            sent, out, release, answered = 0, [], False, []
            for mtype, body, end in found:
                drop, extra = on_message(mtype, body)
                if drop or extra:  # edit the stream: cut this message out, or add after it
                    cut = end + shift
                    out.append(data[sent:cut - 5 - len(body) if drop else cut])
                    out.append(extra)
                    sent = cut
                if mtype == READY:
                    server.tx_status = body
                    session.outstanding -= 1
                    if body == b"I":
                        session.transactions += 1
                    if completions and not drop:  # a query's answer is complete
                        entry = completions.popleft()
                        if entry is not None:
                            answered.append((entry, last_tag, last_error))
                        last_tag = last_error = None
                    release = session.may_release()
                elif mtype == ERROR:
                    router.count(server.node, "errors")
                    if session.pooled and stale_plan(body):  # shared statements outlived a schema change
                        invalidate(list(server.statements.names))
                    if completions is not None:
                        last_error = codec.parse_fields(body).get("C")
                elif mtype == PARAMETER_STATUS:
                    name, value = codec.parse_parameter_status(body)
                    server.params[name] = value
                    # whatever statement caused it, a setting changed: capture them at lease end
                    session.settings_dirty = True
                elif mtype == COMPLETE and completions is not None:
                    last_tag = body
            partial = scanner.partial()
            stop = len(data) - partial
            if partial:
                held = data[stop:]
            if out:
                out.append(data[sent:stop])
                data = b"".join(out)
            elif sent or partial:
                data = data[sent:stop]
            if not release:
                if data:
                    send(data)
                for entry in answered:  # after the answer went to the client
                    report(session, server, *entry)
                continue
            session.detach()  # before the client can send its next query
            try:
                if data:
                    send(data)
            finally:  # also when the session is being killed: the pool gets the connection back
                session.end_lease(server)
            for entry in answered:
                report(session, server, *entry)
            return True  # the lease ended and the session let go of this pump
    except ProtocolViolation as e:
        lost(session, server, f"protocol violation from server: {e.message}")
    except DECODING_ERRORS as e:  # a malformed message from the server: one line, no traceback
        lost(session, server, f"protocol violation from server: malformed message ({e})")
    except OSError as e:
        lost(session, server, str(e))
    except Exception:
        log.exception("%r: relaying from the server failed", session)
        lost(session, server, "internal error")


class Parked:
    """An idle pump greenlet: the Waiter it sleeps on, and the watcher that will wake it."""
    __slots__ = ("greenlet", "waiter", "watcher")

    def __init__(self, greenlet):
        self.greenlet, self.waiter, self.watcher = greenlet, None, None


class Pumps:
    """Reused pump greenlets. A new greenlet costs an mmap + munmap pair (its stack), measured at
    about a fifth of the proxy's CPU per pooled transaction; a finished pump waits here for the
    next lease instead of dying. A pump that is killed (session end) is simply not reused.

    A parked pump is handed its next lease by the server socket itself: start() arms the socket's
    read watcher with the pump's Waiter, so the pump wakes once, when the server's first answer is
    there, instead of waking now only to find nothing to read and wait again (a hub round and a
    read answered EAGAIN less per lease). TLS sockets may hold decrypted bytes: they wake it now."""

    def __init__(self):
        self.idle = []  # Parked
        self.condemned = weakref.WeakSet()  # pumps a session stopped: they die, never park again

    def stop(self, pump, block=False):
        """End a pump that serves the caller's lease. The kill is delivered later, by the loop: by
        then the pump may have ended that lease and parked, or taken another client's lease; a
        condemned pump dies instead of parking, so the kill can reach no other client."""
        self.condemned.add(pump)
        pump.kill(block=block)

    def start(self, session, server):
        """A greenlet running pump(session, server); it may be one that served others before."""
        parked = None
        while self.idle and parked is None:
            parked = self.idle.pop()
            if parked.greenlet.dead:  # never hand a lease to a dead pump (it would hang its client)
                parked = None
        if parked is None:
            return gevent.spawn(self._work, session, server)
        sock = server.sock
        if plain(sock):
            parked.watcher = sock._read_event
            parked.watcher.start(parked.waiter.switch, (session, server))
        else:
            get_hub().loop.run_callback(parked.waiter.switch, (session, server))
        return parked.greenlet

    def _work(self, session, server):
        parked = Parked(gevent.getcurrent())
        while True:
            if not pump(session, server) or parked.greenlet in self.condemned:
                return  # the session may still hold (and kill) this greenlet: never reuse it
            session = server = None  # hold no references while idle
            parked.waiter = Waiter()
            self.idle.append(parked)
            try:
                session, server = parked.waiter.get()
            except BaseException:  # killed while parked (a kill meant for the lease it just ended)
                if parked in self.idle:
                    self.idle.remove(parked)
                raise
            finally:  # woken, or killed while parked: the watcher must not call it again
                if parked.watcher is not None:
                    parked.watcher.stop()
                    parked.watcher = None


PUMPS = Pumps()


def report(session, server, ctx, tag, error):
    """on_query_complete for the plugins: how long, what the server answered."""
    tag = codec.read_cstr(tag, 0)[0] if tag else None
    rows = int(tag.rsplit(" ", 1)[1]) if tag and tag.rsplit(" ", 1)[-1].isdigit() else None
    session.proxy.plugins.query_complete(ctx, Outcome(time.monotonic() - ctx.started, tag, rows, error,
                                                      server.node.name))


def lost(session, server, why):
    server.broken = True
    log.warning("%r: server %s lost: %s", session, server.node.name, why)
    session.proxy.router.suspect(server.node, why)  # the node may be down: the health checker looks now
    if session.closing is None:
        session.terminate("server closed the connection unexpectedly", sqlstate=CONNECTION_FAILURE)
