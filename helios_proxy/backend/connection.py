"""A logged-in connection to one PostgreSQL server, plus the small client the proxy itself needs."""
import logging
import time

import gevent
from gevent import socket, ssl

from ..errors import (BackendError, CONNECTION_FAILURE, INVALID_PASSWORD, PROTOCOL_VIOLATION,
                      SQLCLIENT_UNABLE_TO_ESTABLISH, malformed)
from ..protocol import codec, messages as m
from ..protocol.framing import MessageBuffer
from . import kdf
from .statements import ServerStatements
from ..sockets import peek, plain, recv, recv_later, sendall, watcher
from ..speedups import follow, write
from ..protocol.scram import MECHANISM, ScramClient, md5_hash, md5_response

log = logging.getLogger(__name__)


class ServerConnection:
    """One backend connection. After `connect()` it is idle (ReadyForQuery 'I')."""

    def __init__(self, node, database, credentials, options):
        self.node = node
        self.database = database
        self.credentials = credentials
        self.options = options          # the config sections it needs: pool, tls, server
        self.sock = None
        self.raw = None                 # the kernel socket under a plain sock (the relay's reads), else None
        self.pid = 0
        self.secret = 0
        self.params = {}                # ParameterStatus values as the server reported them
        self.tx_status = m.TX_IDLE
        self.settings_key = ()          # whose session settings it carries (pool/session_state.py)
        self.statements = ServerStatements(options.pool.prepared_statements_cap)  # statements.py
        self.created = self.last_used = time.monotonic()
        self.rbuf = MessageBuffer(1 << 30)
        self.broken = False
        # whose unnamed prepared statement this server holds now: a client session's (its last
        # unnamed Parse), or None once the proxy's own Query or Parse replaced it (frontend/unnamed.py)
        self.unnamed_owner = None
        self.generation = 0     # its pool's generation when opened (pool.py: RECONNECT)
        self.watcher = None     # a read watcher on the loop, armed for the connection's whole life
        self.watched = False    # (watcher is not None): the watcher would have seen EOF or stray bytes
        self.on_readable = None  # what it calls: the pump of a lease, the pool's check when idle
        self.idle_check = None  # the pool's check, made once (pool.py)
        self.last_tag = None    # the CommandComplete tag of the proxy's own last query
        self.cancelling = []    # greenlets sending cancel requests for this connection, all in flight
        self.asked = False      # sent something its next read waits for (read_message: no read answered EAGAIN)

    def __repr__(self):
        return f"<server {self.node.name} pid={self.pid} db={self.database} user={self.credentials.user}>"

    # --- connecting -------------------------------------------------------------------------
    def connect(self, startup_params=None, connect_timeout=None):
        timeout = connect_timeout or self.options.pool.connect_timeout
        addr = (self.node.host, self.node.port)
        try:
            sock = socket.create_connection(addr, timeout=timeout)
        except OSError as e:
            raise BackendError(f"could not connect to server {self.node.name} at {addr[0]}:{addr[1]}: "
                               f"{e.strerror or e}", sqlstate=SQLCLIENT_UNABLE_TO_ESTABLISH) from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.options.server.tcp_keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self.sock = self._negotiate_tls(sock)
            self.raw = self.sock._sock if plain(self.sock) else None
            params = {"user": self.credentials.user, "database": self.database}
            params.update(startup_params or {})
            self.sock.sendall(codec.startup_message(params))
            with malformed("message from the server during login", self._malformed):
                self._login()
            self.sock.settimeout(None)
        except BaseException:
            self.close()
            raise
        self.created = self.last_used = time.monotonic()
        return self

    def _negotiate_tls(self, sock):
        mode = self.options.tls.server_mode
        if mode == "disable":
            return sock
        sock.sendall(codec.special_request(m.SSL_REQUEST_CODE))
        answer = sock.recv(1)
        if answer == b"S":
            ctx = ssl.create_default_context(cafile=self.options.tls.server_ca_file or None)
            if mode != "verify-full":
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            return ctx.wrap_socket(sock, server_hostname=self.node.host)
        if answer == b"N" and mode == "prefer":
            return sock
        raise BackendError(f"server {self.node.name} does not support TLS (tls.server_mode = {mode!r})")

    def _login(self):
        scram = None
        while True:
            mtype, body = self.read_message()
            if mtype == m.AUTHENTICATION:
                code = int.from_bytes(body[:4], "big", signed=True)
                if code == m.AUTH_OK:
                    continue
                scram = self._answer_auth(code, body[4:], scram)
            elif mtype == m.PARAMETER_STATUS:
                name, value = codec.parse_parameter_status(body)
                self.params[name] = value
            elif mtype == m.BACKEND_KEY_DATA:
                self.pid = int.from_bytes(body[:4], "big", signed=True)
                self.secret = int.from_bytes(body[4:8], "big", signed=True)
            elif mtype == m.READY_FOR_QUERY:
                self.tx_status = body
                return
            elif mtype == m.ERROR_RESPONSE:
                raise BackendError("server login failed", fields=codec.parse_fields(body))
            elif mtype in (m.NOTICE_RESPONSE, m.NEGOTIATE_PROTOCOL_VERSION):
                continue
            else:
                raise BackendError(f"unexpected message {mtype!r} from server during login")

    def _answer_auth(self, code, payload, scram):
        creds = self.credentials
        if code == m.AUTH_CLEARTEXT:
            if not (self.options.auth.backend_cleartext or self.options.tls.server_mode == "verify-full"):
                raise BackendError(f"server {self.node.name} asks for the password in cleartext; refused "
                                   "(needs tls.server_mode = verify-full, or auth.backend_cleartext = true)",
                                   sqlstate=INVALID_PASSWORD)
            self._need(creds.password is not None, "a password")
            self.sock.sendall(codec.password(creds.password))
        elif code == m.AUTH_MD5:
            stored = creds.md5 or (md5_hash(creds.password, creds.user) if creds.password is not None else None)
            self._need(stored, "a password or an md5 secret")
            self.sock.sendall(codec.password(md5_response(stored, payload[:4])))
        elif code == m.AUTH_SASL:
            mechanisms = bytes(payload).split(b"\0")
            if MECHANISM.encode() not in mechanisms:
                raise BackendError(f"server {self.node.name} offers no supported SASL mechanism")
            if creds.password is not None:
                cap = self.options.auth.max_scram_iterations
                scram = ScramClient(password=creds.password, derive=lambda pw, salt, n: kdf.derive(
                    pw, salt, n, cap, f"server {self.node.name}"))
            else:
                self._need(creds.client_key and creds.scram, "a password or a SCRAM login by the client")
                scram = ScramClient(client_key=creds.client_key, server_key=creds.scram.server_key)
            self.sock.sendall(codec.sasl_initial_response(MECHANISM, scram.first().encode()))
        elif code in (m.AUTH_SASL_CONTINUE, m.AUTH_SASL_FINAL) and scram is None:
            raise self._malformed(f"SASL {'continue' if code == m.AUTH_SASL_CONTINUE else 'final'} message "
                                  "before SASL began")
        elif code == m.AUTH_SASL_CONTINUE:
            self.sock.sendall(codec.sasl_response(scram.final(bytes(payload).decode()).encode()))
        elif code == m.AUTH_SASL_FINAL:
            try:
                scram.verify(bytes(payload).decode())
            except PermissionError as e:
                raise BackendError(f"server {self.node.name}: {e}") from e
        else:
            raise BackendError(f"server {self.node.name} asks for an unsupported authentication method ({code})")
        return scram

    def _need(self, have, what):
        if not have:
            raise BackendError(f"server login failed: the server asks user \"{self.credentials.user}\" for "
                               f"a password, and the proxy has no {what} for it",
                               fields={"S": "FATAL", "C": INVALID_PASSWORD,
                                       "M": f"password authentication failed for user "
                                            f"\"{self.credentials.user}\""})

    def send(self, data):
        self.asked = True
        try:
            sendall(self.sock, data)
        except OSError as e:  # the client must hear it was the server, not see its own connection drop
            self.broken = True
            raise BackendError(f"server {self.node.name} closed the connection unexpectedly ({e.strerror or e})",
                               sqlstate=CONNECTION_FAILURE) from e

    def send_now(self, data):
        """Send data from a loop callback, where nothing may wait (a plain socket): what the kernel
        takes now, the rest (rare: a connection with nothing owed takes a small request whole) from
        a greenlet; a send that fails marks the connection broken, and its reader sees the loss."""
        try:
            sent = write(self.raw.fileno(), data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = -1
        if sent != len(data):
            gevent.spawn(self._send_rest, data, max(sent, 0))

    def _send_rest(self, data, sent):
        try:
            self.send(memoryview(data)[sent:])
        except Exception:  # (BackendError: broken; whoever reads the connection reports it)
            self.broken = True

    # --- reading ----------------------------------------------------------------------------
    def read_message(self):
        while True:
            msg = self.rbuf.next_message()  # (framing errors raise ProtocolViolation)
            if msg is not None:
                return msg
            if self.asked:  # (its answer cannot have come yet: a read now would raise EAGAIN, ~4,000 instructions)
                self.asked = False
                data = recv_later(self.sock)
            else:
                data = recv(self.sock)
            if not data:
                self.broken = True
                raise BackendError(f"server {self.node.name} closed the connection unexpectedly",
                                   sqlstate=CONNECTION_FAILURE)
            self.rbuf.feed(data)

    # --- the proxy's own queries --------------------------------------------------------------
    def execute(self, sql, params=None):
        """Run one statement (extended protocol when params given); return rows of text or None.

        An ErrorResponse raises BackendError after the connection is back at ReadyForQuery.
        """
        self.unnamed_owner = None  # (a Query, or a Parse of the unnamed statement, replaces the client's)
        if params is None:
            self.sock.sendall(codec.query(sql))
        else:
            self.sock.sendall(codec.parse(sql) + codec.bind(params) + codec.execute() + codec.SYNC)
        return self._own_results()[1]

    def prepare(self, name, sql, param_types=()):
        """Parse a named statement (the proxy's own use: re-creating a client's statement)."""
        self.sock.sendall(codec.parse(sql, name=name, param_types=param_types) + codec.SYNC)
        self._own_results()

    def _own_results(self):
        """_results() of the proxy's own statement, bounded by pool.own_query_timeout: a server
        that does not answer in time is closed (BackendError), never waited for."""
        seconds = self.options.pool.own_query_timeout
        timer = gevent.Timeout(seconds)
        timer.start()
        try:
            return self._results()
        except gevent.Timeout as t:
            if t is not timer:
                raise
            self.close()
            raise BackendError(f"server {self.node.name} did not answer the proxy's own query in {seconds:g} s "
                               "(pool.own_query_timeout)", sqlstate=CONNECTION_FAILURE) from None
        finally:
            timer.close()

    def fetch(self, sql, params=(), max_rows=0):
        """Run one statement with parameters (extended protocol): (columns, rows, truncated).
        At most max_rows rows (0: all); rows are lists of text or None."""
        self.unnamed_owner = None
        self.sock.sendall(codec.parse(sql) + codec.bind(list(params)) + codec.describe_portal()
                          + codec.execute(max_rows=max_rows) + codec.SYNC)
        return self._results()

    def _malformed(self, message):
        """A server that sends what cannot be decoded is not used again."""
        self.broken = True
        return BackendError(f"server {self.node.name}: {message}", sqlstate=PROTOCOL_VIOLATION)

    def _results(self):
        """Read up to ReadyForQuery: (columns, rows, truncated); raise BackendError on an error."""
        with malformed("message from the server", self._malformed):
            return self._read_results()

    def _read_results(self):
        columns, rows, error, truncated = [], [], None, False
        while True:
            mtype, body = self.read_message()
            if mtype == m.DATA_ROW:
                rows.append([c.decode() if c is not None else None for c in codec.parse_data_row(body)])
                if len(rows) % 1000 == 0:
                    gevent.sleep(0)  # (a large answer to the proxy's own query: others run meanwhile)
            elif mtype == m.ROW_DESCRIPTION:
                columns = codec.parse_row_description(body)
            elif mtype == m.PORTAL_SUSPENDED:
                truncated = True
            elif mtype == m.COMMAND_COMPLETE:
                self.last_tag = codec.read_cstr(body, 0)[0]
            elif mtype == m.ERROR_RESPONSE:
                error = codec.parse_fields(body)
            elif mtype == m.PARAMETER_STATUS:
                name, value = codec.parse_parameter_status(body)
                self.params[name] = value
            elif mtype == m.READY_FOR_QUERY:
                self.tx_status = body
                break
        if error:
            raise BackendError("query failed", fields=error, severity="ERROR")
        return columns, rows, truncated

    def cancel(self):
        """Ask the server to cancel what this connection runs (a separate short connection). Until
        the server has taken every such request (`cancelling` done), the pool does not hand the connection
        to another client, whose query the late cancel would hit."""
        sending = gevent.spawn(send_cancel, self.node, self.pid, self.secret)
        self.cancelling = [g for g in self.cancelling if not g.dead] + [sending]
        return sending

    # --- the read watcher (plain sockets): one for the connection's life --------------------------
    def watch(self, callback):
        """Have callback() called from the loop whenever the server's bytes arrive (None: nothing).
        The watcher stays armed between leases, so that a lease costs no epoll_ctl and an idle
        connection whose server went away is noticed by the pool at once (as PgBouncer does)."""
        if self.watcher is None:
            self.watcher = watcher(self.sock)
            self.watcher.start(follow(self, "on_readable"))  # (calls self.on_readable() as it is then)
            self.watched = True
        self.on_readable = callback

    def pause(self):
        """Stop watching until resume() (backpressure: the client is slower than its server)."""
        self.watcher.stop()

    def resume(self):
        if self.watcher is not None and self.sock is not None:
            self.watcher.start(follow(self, "on_readable"))

    def idle_and_clean(self):
        """True if the socket has nothing unread and is not at EOF: a liveness check before reuse,
        one non-blocking peek on the plain socket (TLS sockets: a non-blocking read)."""
        if self.broken or self.rbuf.pending():
            return False
        sock = self.sock
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.setblocking(False)
                try:
                    sock.recv(1)
                finally:
                    sock.setblocking(True)
            elif peek(sock) is None:
                return True
            return False  # unexpected data or EOF: unusable
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False

    def close(self, terminate=True):
        sock, self.sock, self.raw = self.sock, None, None
        self.broken = True
        if sock is None:
            return
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.close()
            self.on_readable = None
        try:
            if terminate:
                sock.settimeout(1)
                sock.sendall(codec.TERMINATE)
        except OSError:
            pass
        finally:
            sock.close()


def send_cancel(node, pid, secret, timeout=5.0):
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout) as s:
            s.sendall(codec.special_request(m.CANCEL_REQUEST_CODE, pid, secret))
            s.recv(1)  # the server closes once it has read the request
    except OSError as e:
        log.warning("cancel request to %s failed: %s", node.name, e)
