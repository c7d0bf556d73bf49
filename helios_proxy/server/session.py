"""One client session: a greenlet that reads the client, and a pump greenlet (relay.py) per server lease.

The session greenlet frames client messages, passes queries through the pipeline, leases a server
connection when a transaction starts and forwards messages in one send per batch; the pump streams
the server's replies back. Two directions, two greenlets: neither side can stall the other
(pipelined clients, COPY, NOTIFY). In session pooling the lease lasts the whole session; in
transaction and statement pooling it ends at the ReadyForQuery that leaves the server idle.
"""
import itertools
from collections import deque
import logging
import time

import gevent
from gevent import socket
from gevent.lock import Semaphore

from .. import pipeline
from gevent.event import Event

from ..errors import (ADMIN_SHUTDOWN, FEATURE_NOT_SUPPORTED, IDLE_SESSION_TIMEOUT, QUERY_CANCELED,
                      FatalError, ProtocolViolation, ProxyError)
from ..pipeline.stage import Action
from ..pool import session_state
from ..protocol import codec, messages as m
from ..protocol.framing import MessageBuffer
from . import handshake, relay

log = logging.getLogger(__name__)
RECV_SIZE = 65536
_ids = itertools.count(1)

Q, P, S, X, F = (t[0] for t in (m.QUERY, m.PARSE, m.SYNC, m.TERMINATE, m.FUNCTION_CALL))
EXTENDED = frozenset(b"PBDECH")


class IdleTimeout(Exception):
    pass


class QueryCanceledWhileWaiting(ProxyError):
    sqlstate = QUERY_CANCELED


class ClientSession:
    def __init__(self, proxy, sock, peer):
        self.proxy = proxy
        self.sock = sock
        self.peer = peer
        self.id = next(_ids)
        self.tls = False
        self.user = self.database = None
        self.application_name = ""
        self.pool = self.server = None
        self.secret = 0
        self.started = time.monotonic()
        self.outstanding = 0          # Query/Sync/FunctionCall sent, ReadyForQuery not yet seen
        self.in_extended = False      # extended-protocol messages sent since the last Sync
        self.skip_to_sync = False     # a rejected extended query: drop messages up to Sync
        self._pending_error = None    # the ErrorResponse to send at that Sync
        self.ready_seen = 0           # ReadyForQuery messages relayed so far
        self.answers = deque()        # (ready_seen to wait for, before it?, payload): proxy answers
        self.write_lock = Semaphore()
        self.pump = None
        self.closing = None           # reason, once the proxy decided to end the session
        self.login_timer = None
        self.pooled = proxy.config.pool.mode != "session"  # leases end with each transaction
        self.pinned = None            # why this client keeps its server connection (pooled modes)
        self.settings = {}            # session settings the client expects on any server
        self.settings_dirty = False   # the client ran SET/RESET/DISCARD: capture at lease end
        self.idle_lease = Event()     # set while no lease is being ended
        self.idle_lease.set()
        self.waiting = None           # the greenlet waiting for a server, while it waits
        self.backend_pid = 0          # the pid in the BackendKeyData the client got

    def __repr__(self):
        return f"<session {self.id} {self.peer[0]}:{self.peer[1]} user={self.user} db={self.database}>"

    # --- lifecycle --------------------------------------------------------------------------
    def run(self):
        reason = "client closed the connection"
        try:
            if handshake.run(self):
                self.log_event("login")
                self.relay()
        except FatalError as e:
            reason = f"{e.sqlstate} {e.message}"
            self.send_error(e)
        except ProxyError as e:
            reason = f"{e.sqlstate} {e.message}"
            self.send_error(FatalError(e.message, sqlstate=e.sqlstate, detail=e.detail, hint=e.hint))
        except OSError as e:
            reason = f"connection error: {e}"
        except gevent.GreenletExit:
            reason = self.closing or "terminated"
        except Exception:  # a bug must cost one session, never the proxy
            log.exception("%r failed", self)
            reason = "internal error"
            self.send_error(FatalError("internal error in HeliosProxy", sqlstate="XX000"))
        finally:
            self.finish(self.closing or reason)

    def finish(self, reason):
        if self.pump is not None:
            self.pump.kill(block=True)
        self.idle_lease.wait()
        self.proxy.cancels.unregister(self.backend_pid, self.secret)
        if self.server is not None:
            self.release_server()
        try:
            self.sock.close()
        except OSError:
            pass
        self.log_event("closed", reason)

    def log_event(self, event, reason=None):
        if self.proxy.config.log.connections and self.user:
            extra = f" ({reason}, {time.monotonic() - self.started:.1f} s)" if reason else ""
            tls = " tls" if self.tls else ""
            log.info("client %s:%s user=%s db=%s%s %s%s", self.peer[0], self.peer[1], self.user,
                     self.database, tls, event, extra)

    def terminate(self, message, sqlstate=ADMIN_SHUTDOWN):
        """End this session from outside (shutdown, admin): tell the client why, then close."""
        self.closing = message
        self.send_error(FatalError(message, sqlstate=sqlstate))
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- writing to the client --------------------------------------------------------------
    def send(self, data):
        with self.write_lock:
            self.sock.sendall(data)

    def send_error(self, exc):
        try:
            self.send(codec.error_from(exc))
        except OSError:
            pass

    def read_password(self):
        """Read the client's next message during authentication; it must be a 'p' message."""
        header = handshake.read_exact(self.sock, 5)
        length = int.from_bytes(header[1:5], "big", signed=True)
        if header[:1] != m.PASSWORD:
            raise ProtocolViolation(f"expected password response, got message type {header[:1]!r}")
        if length < 4 or length > self.proxy.config.server.max_startup_packet:
            raise ProtocolViolation(f"invalid message length {length} for password message")
        return handshake.read_exact(self.sock, length - 4)

    # --- server leases ----------------------------------------------------------------------
    def attach(self, pool, server):
        self.pool, self.server = pool, server

    def lease(self):
        """Lease a server connection for the next transaction (pooled modes) and start its pump."""
        self.idle_lease.wait()
        self.waiting = gevent.getcurrent()
        try:
            server = self.pool.acquire()
        finally:
            self.waiting = None
        try:
            session_state.apply(server, self.settings)
        except BaseException:
            self.pool.release(server, reusable=server.tx_status == m.TX_IDLE and not server.broken)
            raise
        self.server = server
        self.pump = gevent.spawn(relay.pump, self, server)

    def may_release(self):
        """Called by the pump at each ReadyForQuery: does the lease end here?"""
        return (self.pooled and self.outstanding == 0 and not self.in_extended and not self.pinned
                and self.server.tx_status == m.TX_IDLE and self.closing is None)

    def detach(self):
        """The pump is ending the lease: from now on the next message needs a new one."""
        self.server = None
        self.pump = None
        self.idle_lease.clear()

    def end_lease(self, server):
        """Back to the pool after a transaction (pooled modes), carrying the client's new settings."""
        try:
            if self.settings_dirty:
                self.settings_dirty = False
                self.settings = session_state.capture(server)
            self.pool.release(server, reusable=server.tx_status == m.TX_IDLE)
        except (ProxyError, OSError) as e:
            log.info("%r: ending the lease of %r failed (%s); closing it", self, server, e)
            self.pool.release(server, reusable=False)
        finally:
            self.idle_lease.set()

    def pin(self, reason):
        """Keep the current (or next) server connection for the rest of the session."""
        if self.pooled and not self.pinned:
            self.pinned = reason
            log.info("%r pinned to its server connection: it uses %s", self, reason)

    def cancel(self):
        """A CancelRequest for this session: cancel its server's query, or stop waiting for a server."""
        if self.server is not None and not self.server.broken:
            self.server.cancel()
            return True
        if self.waiting is not None:
            self.waiting.kill(QueryCanceledWhileWaiting("canceling statement due to user request"), block=False)
            return True
        return False

    def release_server(self):
        """At session end: return the server to its pool if its state is known and clean, else close it."""
        server, pool = self.server, self.pool
        self.server = None
        reusable = not server.broken and self.outstanding == 0 and not self.in_extended
        if self.outstanding and not server.broken:
            server.cancel()  # stop the orphaned query now, not when it next writes to a closed socket
        if reusable:
            try:
                if server.tx_status != m.TX_IDLE:
                    server.execute("ROLLBACK")
                reset = self.proxy.config.pool.reset_query
                if reset and (not self.pooled or self.pinned or self.settings_dirty):
                    server.execute(reset)
                    server.settings_key = ()
                elif self.pooled and self.settings:
                    session_state.apply(server, {})
                reusable = server.tx_status == m.TX_IDLE
            except (ProxyError, OSError) as e:
                log.info("reset of %r failed (%s); closing it", server, e)
                reusable = False
        pool.release(server, reusable)

    # --- the client side ----------------------------------------------------------------------
    def relay(self):
        cfg = self.proxy.config.server
        buf = MessageBuffer(cfg.max_message_size)
        recv = self.sock.recv
        if self.server is not None:
            self.pump = gevent.spawn(relay.pump, self, self.server)
        while True:
            timeout = cfg.client_idle_timeout
            if timeout and self.outstanding == 0 and (self.server is None or self.server.tx_status == m.TX_IDLE):
                try:
                    with gevent.Timeout(timeout, IdleTimeout):
                        data = recv(RECV_SIZE)
                except IdleTimeout:
                    self.terminate("terminating connection due to idle-session timeout",
                                   sqlstate=IDLE_SESSION_TIMEOUT)
                    return
            else:
                data = recv(RECV_SIZE)
            if not data:
                return
            buf.feed(data)
            if not self.forward(buf):
                return

    def forward(self, buf):
        """Forward every complete message in buf, one send per run; False once the client sent Terminate."""
        data, stages = buf.buf, self.proxy.stages
        send = self.server.sock.sendall if self.server is not None else None
        start = buf.pos  # first byte of the run not yet forwarded
        while True:
            msg = buf.next()
            if msg is None:
                break
            mtype, begin, end = msg
            if self.skip_to_sync:
                start = end
                if mtype == S:
                    self.skip_to_sync = False
                    self._answer_at_sync(send)
                continue
            if mtype == X:
                if begin > start:
                    send(data[start:begin])
                return False
            if self.server is None:  # pooled modes: a new transaction needs a lease (nothing unsent here)
                try:
                    self.lease()
                except ProxyError as e:
                    start = end
                    self._refuse(mtype, codec.error_response(e.sqlstate, e.message, detail=e.detail))
                    continue
                send = self.server.sock.sendall
            if stages and (mtype == Q or mtype == P):
                forward, payload = self._run_pipeline(mtype, bytes(data[begin + 5:end]))
                if payload is not None:  # changed or answered: send what came before, then this
                    if begin > start:
                        send(data[start:begin])
                    start = end
                    if not forward:
                        self._refuse(mtype, payload)
                        continue
                    send(payload)
            if mtype == Q or mtype == S or mtype == F:
                self.outstanding += 1
                self.in_extended = False
            elif mtype in EXTENDED:
                self.in_extended = True
        if buf.pos > start:
            send(data[start:buf.pos])
        return True

    def _run_pipeline(self, mtype, body):
        """Run the stages on a Query or Parse.

        Returns (True, None) to forward it unchanged, (True, message) to forward a rewritten
        message, or (False, payload) when the proxy answers it itself.
        """
        if mtype == Q:
            sql, name, rest = codec.read_cstr(body, 0)[0], "", b""
        else:
            name, pos = codec.read_cstr(body, 0)
            sql, pos = codec.read_cstr(body, pos)
            rest = body[pos:]
        ctx = pipeline.QueryContext(self, sql, "simple" if mtype == Q else "extended", name)
        result = pipeline.run(self.proxy.stages, ctx)
        if result.action is Action.CONTINUE:
            if ctx.sql == sql:
                return True, None
            if mtype == Q:
                return True, codec.query(ctx.sql)
            return True, codec.message(m.PARSE, codec.cstr(name) + codec.cstr(ctx.sql) + rest)
        if result.action is Action.REJECT:
            return False, codec.error_response(result.sqlstate, result.message)
        if mtype == Q:
            return False, result.payload
        return False, codec.error_response(FEATURE_NOT_SUPPORTED,
                                           "a proxy answer is not available for extended-protocol queries")

    def _refuse(self, mtype, payload):
        """Answer a Query now; for extended protocol, drop messages up to Sync and answer there."""
        if mtype == Q or mtype == S or mtype == F:
            self._answer(payload)
        else:
            self.skip_to_sync = True
            self._pending_error = payload

    def _answer_at_sync(self, send):
        """The client's Sync after a refused extended message: the error, then ReadyForQuery."""
        payload, self._pending_error = self._pending_error, None
        if self.in_extended:
            # Messages of this batch before the refused one already reached the server: let it
            # finish them (Sync) and put our error before its ReadyForQuery.
            # Unlike PostgreSQL, their effects are not rolled back with the batch.
            send(codec.SYNC)
            self.outstanding += 1
            self.in_extended = False
            self.answers.append((self.ready_seen + self.outstanding, True, payload))
        else:
            self._answer(payload)

    def _answer(self, payload):
        """Answer the client from the proxy after the server has answered everything sent before."""
        payload = payload or b""
        if self.outstanding:
            self.answers.append((self.ready_seen + self.outstanding, False, payload))
        else:
            status = self.server.tx_status if self.server is not None else m.TX_IDLE
            self.send(payload + codec.ready_for_query(status))
