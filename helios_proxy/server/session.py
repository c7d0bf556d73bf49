"""One client session: a greenlet that reads the client, and a pump greenlet that relays the server.

The session greenlet frames client messages, passes queries through the pipeline and forwards them
in one send per batch; the pump streams the server's replies back, tracking ReadyForQuery so the
session always knows whether its server connection is idle, busy or in a transaction. Two
directions, two greenlets: neither side can stall the other (pipelined clients, COPY, NOTIFY).
"""
import itertools
import logging
import time

import gevent
from gevent import socket
from gevent.event import Event
from gevent.lock import Semaphore

from .. import pipeline
from ..errors import (ADMIN_SHUTDOWN, CONNECTION_FAILURE, FEATURE_NOT_SUPPORTED, IDLE_SESSION_TIMEOUT,
                      FatalError, ProtocolViolation, ProxyError)
from ..pipeline.stage import Action
from ..protocol import codec, messages as m
from ..protocol.framing import MessageBuffer, StreamScanner
from . import handshake

log = logging.getLogger(__name__)
RECV_SIZE = 65536
_ids = itertools.count(1)

Q, P, S, X, F = (t[0] for t in (m.QUERY, m.PARSE, m.SYNC, m.TERMINATE, m.FUNCTION_CALL))
EXTENDED = frozenset(b"PBDECH")
_SAME = object()  # the pipeline left the message unchanged
# Server messages the pump must see: ReadyForQuery and ParameterStatus.
PUMP_WANTS = (m.READY_FOR_QUERY[0], m.PARAMETER_STATUS[0])


class IdleTimeout(Exception):
    pass


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
        self.idle = Event()           # set while outstanding == 0
        self.idle.set()
        self.write_lock = Semaphore()
        self.pump = None
        self.closing = None           # reason, once the proxy decided to end the session
        self.login_timer = None

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
        if self.server is not None:
            self.proxy.cancels.unregister(self.server.pid, self.secret)
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

    # --- server attachment ------------------------------------------------------------------
    def attach(self, pool, server):
        self.pool, self.server = pool, server

    def release_server(self):
        """Return the server to its pool if its state is known and clean, else close it."""
        server, pool = self.server, self.pool
        self.server = self.pool = None
        reusable = not server.broken and self.outstanding == 0 and not self.in_extended
        if self.outstanding and not server.broken:
            server.cancel()  # stop the orphaned query now, not when it next writes to a closed socket
        if reusable:
            try:
                if server.tx_status != m.TX_IDLE:
                    server.execute("ROLLBACK")
                reset = self.proxy.config.pool.reset_query
                if reset:
                    server.execute(reset)
                reusable = server.tx_status == m.TX_IDLE
            except (ProxyError, OSError) as e:
                log.info("reset of %r failed (%s); closing it", server, e)
                reusable = False
        pool.release(server, reusable)

    def _pump(self, server):
        """Relay the server's bytes to the client, tracking ReadyForQuery and ParameterStatus."""
        scanner = StreamScanner(PUMP_WANTS)
        recv, send = server.sock.recv, self.send
        try:
            while True:
                data = recv(RECV_SIZE)
                if not data:
                    raise ConnectionResetError("server closed the connection")
                for mtype, body in scanner.feed(data):
                    if mtype == 90:  # 'Z'
                        server.tx_status = body
                        self.outstanding -= 1
                        if self.outstanding <= 0:
                            self.outstanding = 0
                            self.idle.set()
                    else:
                        name, value = codec.parse_parameter_status(body)
                        server.params[name] = value
                send(data)
        except ProtocolViolation as e:
            server.broken = True
            self._server_lost(f"protocol violation from server: {e.message}")
        except OSError as e:
            server.broken = True
            self._server_lost(str(e))
        except Exception:
            log.exception("%r: relaying from the server failed", self)
            server.broken = True
            self._server_lost("internal error")

    def _server_lost(self, why):
        log.warning("%r: server %s lost: %s", self, self.server.node.name if self.server else "?", why)
        if self.closing is None:
            self.terminate("server closed the connection unexpectedly", sqlstate=CONNECTION_FAILURE)

    # --- the client side ----------------------------------------------------------------------
    def relay(self):
        cfg = self.proxy.config.server
        buf = MessageBuffer(cfg.max_message_size)
        recv = self.sock.recv
        self.pump = gevent.spawn(self._pump, self.server)
        while True:
            timeout = cfg.client_idle_timeout
            if timeout and self.outstanding == 0 and self.server.tx_status == m.TX_IDLE:
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
        data, send = buf.buf, self.server.sock.sendall
        stages = self.proxy.stages
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
                    self._answer(self._pending_error)
                continue
            if mtype == X:
                if begin > start:
                    send(data[start:begin])
                return False
            if stages and (mtype == Q or mtype == P):
                replacement = self._run_pipeline(mtype, bytes(data[begin + 5:end]))
                if replacement is not _SAME:
                    if begin > start:
                        send(data[start:begin])
                    start = end
                    if replacement is None:
                        continue
                    send(replacement)
            if mtype == Q or mtype == S or mtype == F:
                self.outstanding += 1
                self.idle.clear()
                self.in_extended = False
            elif mtype in EXTENDED:
                self.in_extended = True
        if buf.pos > start:
            send(data[start:buf.pos])
        return True

    def _run_pipeline(self, mtype, body):
        """Run the stages on a Query or Parse: _SAME, a replacement message, or None if answered here."""
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
                return _SAME
            if mtype == Q:
                return codec.query(ctx.sql)
            return codec.message(m.PARSE, codec.cstr(name) + codec.cstr(ctx.sql) + rest)
        if result.action is Action.REJECT:
            error = codec.error_response(result.sqlstate, result.message)
        elif mtype == Q:
            error = result.payload
        else:
            error = codec.error_response(FEATURE_NOT_SUPPORTED,
                                         "a proxy answer is not available for extended-protocol queries")
        if mtype == Q:
            self._answer(error)
        else:
            self.skip_to_sync = True
            self._pending_error = error
        return None

    def _answer(self, payload):
        """Answer the client from the proxy once the server has answered everything before it."""
        self._pending_error = None
        self.idle.wait()
        self.send((payload or b"") + codec.ready_for_query(self.server.tx_status))
