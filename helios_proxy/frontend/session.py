"""One client session: a greenlet that reads the client, and a lease (pool/lease.py) whose pump
(relay.py) moves the server's answers back.

The session greenlet frames client messages, passes queries through the pipeline, leases a server
connection when a transaction starts and forwards messages in one send per batch: the decisions at
query and transaction boundaries, written synchronously. Inside a lease the server's bytes move
from loop callbacks (relay.CallbackPump), so neither direction can stall the other (pipelined
clients, COPY, NOTIFY). In session pooling the lease lasts the whole session; in transaction and
statement pooling it ends at the ReadyForQuery that leaves the server idle (pool/lease.py).
"""
import itertools
import logging
import time

import gevent
from gevent import socket

from ..errors import ADMIN_SHUTDOWN, FatalError, ProtocolViolation, ProxyError
from ..plugins.view import SessionInfo
from ..limits import release as release_limits
from ..pool.session_state import SessionSettings
from ..pool.prepared import StatementBook
from ..continuity.journal import Journal
from ..continuity.session_migrate import Snapshot
from ..protocol import codec, messages as m
from ..sockets import Writer
from ..routing.state import RouteState
from ..stats import Counters
from . import admin_db, handshake
from .forward import Forwarder
from .identity import Identity
from .lease_slot import LeaseSlot
from .plan import ResponsePlan

log = logging.getLogger(__name__)
_ids = itertools.count(1)


def number_sessions(index, count):
    """Session ids of worker index of count: index+1, index+1+count, ... (unique over the workers)."""
    global _ids
    _ids = itertools.count(index + 1, count)


class ClientSession:
    """One client's session: each part has one writer (docs/architecture.md, tests/unit/test_layers.py)."""
    __slots__ = ("proxy", "sock", "writer", "identity", "slot", "plan", "statements", "route", "settings",
                 "counters", "journal", "cache_state", "analytics_state", "limits_held", "closing", "__weakref__")

    def __init__(self, proxy, sock, peer):
        self.proxy = proxy
        self.sock = sock
        self.writer = Writer(sock)    # everything sent to the client, in order (sockets.py)
        self.identity = Identity(next(_ids), peer, sock.family == socket.AF_UNIX)  # who it is: set by the login
        self.slot = LeaseSlot(self)   # its lease, home pool, pump, waits, pin (lease_slot.py)
        # what the server still owes the client, in order, and the proxy's edits to it (plan.py)
        self.plan = ResponsePlan(completions=bool(proxy.plugins.complete_impls) or proxy.analytics is not None)
        self.statements = StatementBook()  # every prepared statement fact of the client (pool/prepared.py)
        self.route = RouteState()     # where its next lease goes, its last write position (routing/state.py)
        self.settings = SessionSettings()  # what it expects on any server, changed since (pool/session_state.py)
        self.counters = Counters()    # queries, transactions, bytes, waits (stats.py)
        self.journal = None           # continuity/journal.py, with [replay] enabled
        # the query cache's part (cache/state.py), made by the cache while it is on
        self.cache_state = proxy.cache.session_state() if proxy.cache is not None else None
        self.analytics_state = None   # analytics' part (analytics/: SessionState), made at its first answer
        self.limits_held = []         # (limit, key) concurrency slots of its queries in flight (limits/)
        self.closing = None           # reason, once the proxy decided to end the session

    @property
    def server(self):
        """The leased server connection, or None between leases."""
        lease = self.slot.lease
        return lease.server if lease is not None else None

    def __repr__(self):
        who = self.identity
        return f"<session {who.id} {who.peer[0]}:{who.peer[1]} user={who.user} db={who.database}>"

    # --- lifecycle --------------------------------------------------------------------------
    def run(self):
        reason = "client closed the connection"
        try:
            if handshake.run(self):
                self.log_event("login")
                if self.identity.admin:
                    admin_db.serve(self)
                    return
                self.proxy.plugins.notify("on_client_connect", session=SessionInfo(self))
                if self.proxy.cache is not None and self.proxy.cache.logical and self.identity.home is None:
                    self.proxy.cache.reader(self.identity.database)  # (its slot is made while the client starts)
                replay = self.proxy.config.replay
                if replay.enabled and self.identity.home is None:
                    self.journal = Journal(replay.max_journal_bytes,
                                           None if self.identity.pooled else Snapshot(dict(self.settings.values)))
                if self.slot.lease is not None:  # session pooling: the lease from login goes on
                    self.slot.lease.run()
                Forwarder(self).run()
        except ProtocolViolation as e:
            reason = f"{e.sqlstate} {e.message}"
            log.warning("%r: protocol violation: %s", self, e.message)
            self.send_error(e)
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
        if self.limits_held:
            release_limits(self)
        slot = self.slot
        if slot.lease is not None:
            slot.lease.stop_pump(block=True)
        slot.idle.wait()
        self.proxy.cancels.unregister(self.identity.backend_pid, self.identity.secret)
        if slot.lease is not None:
            try:
                slot.release()
            except Exception:  # never let cleanup take more than this session
                log.exception("%r: releasing its server failed", self)
        if self.journal is not None:
            self.journal.close()
        if self.identity.tenant is not None:
            self.proxy.tenants.left(self.identity.tenant, self)
        self.writer.close()
        try:
            self.sock.close()
        except OSError:
            pass
        self.log_event("closed", reason)
        if self.identity.user is not None and not self.identity.admin:
            self.proxy.plugins.notify("on_client_disconnect", session=SessionInfo(self), reason=reason)

    def logged_in(self):
        """Authentication is over (or the session ends): its slot in the per-address budget of
        connections still logging in is freed, once."""
        if not self.identity.authenticated:
            self.identity.authenticated = True
            logging_in = self.proxy.logging_in
            logging_in[self.identity.peer[0]] -= 1
            if logging_in[self.identity.peer[0]] <= 0:
                del logging_in[self.identity.peer[0]]

    def log_event(self, event, reason=None):
        if self.proxy.config.log.connections and self.identity.user:
            who = self.identity
            extra = f" ({reason}, {time.monotonic() - who.started:.1f} s)" if reason else ""
            tls = " tls" if who.tls else ""
            log.info("client %s:%s user=%s db=%s%s %s%s", who.peer[0], who.peer[1], who.user, who.database, tls, event,
                     extra)

    def close_for(self, message):
        """The proxy decided to end this session (a timeout, shutdown, admin): why, once."""
        self.closing = message

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
        """Send to the client after everything queued before; waits until the kernel took it."""
        self.writer.send(data)

    def send_error(self, exc):
        """Send an ErrorResponse; after a FATAL one the client hears nothing more (one FATAL only)."""
        writer = self.writer
        if writer.silent:
            return
        writer.silent = exc.severity == "FATAL"
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
