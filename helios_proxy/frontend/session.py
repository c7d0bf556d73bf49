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
from gevent.event import Event

from ..errors import (ADMIN_SHUTDOWN, QUERY_CANCELED, BackendError, FatalError, ProtocolViolation, ProxyError,
                      node_unreachable)
from ..jobs import JOBS
from ..limits import release as release_limits
from ..plugins.view import SessionInfo
from ..pool import prepared, session_state
from ..pool.session_state import SessionSettings
from ..pool.lease import Lease, ends_here
from ..backend.statements import invalidate_all
from ..pool.prepared import ClientStatements
from ..pool.reset import reset_for_reuse
from ..continuity.journal import Journal
from ..continuity.session_migrate import Snapshot, capture
from ..protocol import codec, messages as m
from ..sockets import Writer, in_hub
from ..routing.state import RouteState
from ..stats import Counters
from . import admin_db, handshake, relay  # noqa: F401 - relay: a lease's pump (it sets Lease.starter)
from .forward import Forwarder
from .identity import Identity
from .plan import ResponsePlan

log = logging.getLogger(__name__)
_ids = itertools.count(1)


def number_sessions(index, count):
    """Session ids of worker index of count: index+1, index+1+count, ... (unique over the workers)."""
    global _ids
    _ids = itertools.count(index + 1, count)


class QueryCanceledWhileWaiting(ProxyError):
    sqlstate = QUERY_CANCELED


class ClientSession:
    def __init__(self, proxy, sock, peer):
        self.proxy = proxy
        self.sock = sock
        self.identity = Identity(next(_ids), peer, sock.family == socket.AF_UNIX)  # who it is: set by the login
        self.pool = None              # its home pool (credentials; the primary's, or its database's host)
        self.lease = None             # pool/lease.py: the server connection lent to it now
        self.journal = None           # continuity/journal.py, with [replay] enabled
        self.pending_error = None     # an ErrorResponse its next request gets (a replay that failed)
        self.writer = Writer(sock)    # everything sent to the client, in order (sockets.py)
        self.callback_pump = None     # relay.CallbackPump, made at the first lease, reused
        # what the server still owes the client, in order, and the proxy's edits to it (plan.py)
        self.plan = ResponsePlan(completions=bool(proxy.plugins.complete_impls) or proxy.analytics is not None)
        self.statements = ClientStatements()  # its named prepared statements (pooled modes)
        self.discard_pending = False  # it sent DISCARD ALL / DEALLOCATE ALL to the next server
        self.route = RouteState()     # where its next lease goes, its last write position (routing/state.py)
        self.closing = None           # reason, once the proxy decided to end the session
        self.fatal_sent = False       # a FATAL went out: nothing more for the client
        self.login_timer = None
        self.pinned = None            # why this client keeps its server connection (pooled modes)
        self.settings = SessionSettings()  # what it expects on any server, changed since (pool/session_state.py)
        self.schema_changed = False   # it ran DDL: shared statements are re-parsed after it commits
        self.restore = None           # prepared statements to re-create at the next lease (move_off)
        self.streaming = False        # a large CopyData is being streamed to the server (forward.py)
        self.idle_lease = Event()     # set while no lease is being ended
        self.idle_lease.set()
        self.waiting = None           # the AsyncResult it waits on for a server, while it waits
        self.counters = Counters()    # queries, transactions, bytes, waits (stats.py)
        # the query cache's part (cache/state.py), made by the cache while it is on
        self.cache_state = proxy.cache.session_state() if proxy.cache is not None else None
        self.limits_held = []         # (limit, key) concurrency slots of its queries in flight (limits/)
        self.named_queries = {}       # (completions on) named statement -> its Parse's QueryContext
        self.analytics_state = None   # analytics' part (analytics/: SessionState), made at its first answer

    @property
    def server(self):
        """The leased server connection, or None between leases."""
        lease = self.lease
        return lease.server if lease is not None else None

    @property
    def lease_pool(self):
        return self.lease.pool if self.lease is not None else None

    @property
    def lease_target(self):
        return self.lease.target if self.lease is not None else None

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
                if self.lease is not None:  # session pooling: the lease from login goes on
                    self.lease.run()
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
        if self.lease is not None:
            self.lease.stop_pump(block=True)
        self.idle_lease.wait()
        self.proxy.cancels.unregister(self.identity.backend_pid, self.identity.secret)
        if self.server is not None:
            try:
                self.release_server()
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
        if self.fatal_sent:
            return
        self.fatal_sent = exc.severity == "FATAL"
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
        """The login's server connection becomes the session's lease (its pump starts in run())."""
        self.pool, self.lease = pool, Lease(self, pool, server)

    def take_lease(self):
        """Lease a server connection for the next transaction (pooled modes) and start its pump."""
        self.idle_lease.wait()
        if self.proxy.paused:  # PAUSE (admin): new transactions wait for RESUME
            self.proxy.wait_unpaused(self.identity.database)
        target, intent, pool, server = self._acquire_routed()
        try:
            settings = self.settings
            if settings.checked:
                if server.settings_key != settings.key:  # else it carries them already
                    session_state.apply(server, settings.values, settings.key)
            else:  # greeted without a server: the startup settings are checked now, FATAL if bad
                handshake.apply_settings(server, settings.values)
                settings.checked = True
        except BaseException:
            pool.release(server, reusable=server.tx_status == m.TX_IDLE and not server.broken)
            raise
        if self.identity.tenant is not None:  # helios.tenant() proven anew on every lease (tenancy/proof.py)
            try:
                self.proxy.tenants.establish(server, self.identity.tenant)
            except BaseException:  # its tenant state cannot be proven: never handed on
                pool.release(server, reusable=False)
                raise
        if self.restore:  # moved off its last server: its prepared statements, re-created here
            try:
                prepared.recreate(server, self.restore)
                self.restore = None
            except BaseException:
                pool.release(server, reusable=False)
                raise
        router = self.proxy.router
        router.count(server.node, target)
        if router.on and self.identity.home is None:
            router.balancer.started(server.node)
        lease = self.lease = Lease(self, pool, server, target, intent)
        lease.pump = relay.start(self, lease)  # (lease.run(), without a call more per transaction)

    def _acquire_routed(self):
        """(target, intent, pool, server) where the route stage sent the next transaction; the primary when
        that standby is unreachable or has not replayed the client's last write in time."""
        router = self.proxy.router
        route = self.route  # (RouteState.take(), inline: a call less per transaction)
        target, node_name = route.next_target or ("primary", None)
        lag, tables = route.next_lag, route.next_tables
        route.next_target = route.next_lag = route.next_tables = None
        intent = target  # a read that falls back to the primary is still a read
        node = router.pick(target, node_name, lag) if self.identity.home is None else None
        if node is not None:
            pool = self.proxy.pools.get(node, self.identity.database, self.pool.credentials)
            try:
                server = self._acquire(pool)
            except BackendError as e:  # a standby that fails is not the client's failure
                router.unreachable(node, e.message, e)
            else:
                if target != "standby" or not self.route.ryw_lsn or self._replayed(router, pool, server):
                    if tables:
                        router.tables.count(tables, node.name)
                    return target, intent, pool, server
        pool, server = self.acquire_primary()
        if tables:
            router.tables.count(tables, pool.node.name)
        return "primary", intent, pool, server

    def acquire_primary(self):
        """(pool, server) on the confirmed primary. While there is none (failover, switchover) wait
        in the switchover buffer; a primary that cannot be reached is reported to the health
        checker and tried again until it is replaced or failover.buffer_timeout has passed."""
        proxy = self.proxy
        if self.identity.home is not None or proxy.config.database_nodes:  # (a reload may move its database)
            self.identity.home = proxy.config.database_nodes.get(self.identity.database)
            if self.identity.home is not None:  # a database outside the cluster: its one server, no failover
                if self.identity.home.name != self.pool.node.name:
                    self.pool = proxy.pools.get(self.identity.home, self.identity.database, self.pool.credentials)
                return self.pool, self._acquire(self.pool)
        node = proxy.buffer.ready()
        breakers = proxy.router.breakers
        if node is not None and node.name == self.pool.node.name and (
                not breakers.enabled or breakers.allows(node)):  # the usual case: its own pool
            server = self.pool.take_idle()
            if server is not None:
                return self.pool, server
        deadline = time.monotonic() + proxy.config.failover.buffer_timeout
        while True:
            try:
                node = proxy.buffer.primary(deadline, self._waiting_on)
            finally:
                self.waiting = None
            breakers.check(node)  # open: 57P03 at once, nothing else can take the transaction
            if node.name != self.pool.node.name:  # the primary changed: this client's home pool too
                self.pool = proxy.pools.get(node, self.identity.database, self.pool.credentials)
            try:
                return self.pool, self._acquire(self.pool)
            except (BackendError, OSError) as e:
                if not node_unreachable(e) or time.monotonic() >= deadline or not proxy.buffer.failover_possible():
                    raise  # (nothing to wait for: PostgreSQL's connection error, at once)
                proxy.router.suspect(node, getattr(e, "message", None) or str(e))
                gevent.sleep(0.05)

    def _acquire(self, pool):
        counters = self.counters
        counters.wait_started = time.monotonic()
        try:
            return pool.acquire(waiting=self._waiting_on)
        finally:
            counters.wait_seconds += time.monotonic() - counters.wait_started
            self.waiting = counters.wait_started = None

    def _replayed(self, router, pool, server):
        """Read-your-writes: has this standby replayed the client's last write? If not, give it back."""
        try:
            fresh = router.caught_up(server.node, server, self.route.ryw_lsn)
        except BaseException:
            pool.release(server, reusable=False)
            raise
        if not fresh:
            pool.release(server)
        return fresh

    def _waiting_on(self, result):
        self.waiting = result

    def release_if_idle(self):
        """After the proxy answered a request itself: end a lease the server has nothing left for."""
        lease = self.lease
        if lease is not None and ends_here(self, lease.server):
            lease.stop_pump(block=False)  # it waits for the server; nothing more will come
            self.detach()
            self.end_lease(lease)

    def detach(self):
        """The lease is ending: from now on the next message needs a new one (once idle_lease is set)."""
        self.lease = None
        self.idle_lease.clear()

    def lease_ended(self, lease, out):
        """The pump saw the lease's last answer (by its pool mode's rule): the client gets the last
        bytes, the server goes back to its pool. From a loop callback, an end that must ask the
        server something (settings, WAL position) runs in a worker greenlet."""
        self.detach()  # before the client can send its next query
        try:
            if out:
                self.writer.write(out)
        except OSError:
            pass  # the client is gone: its reader sees it; the server is idle and goes back clean
        if in_hub() and (self.settings.dirty or (self.proxy.router.on and self.identity.home is None
                                                 and lease.intent == "primary")):
            JOBS.submit(self.end_lease, lease)
        else:
            self.end_lease(lease)

    def end_lease(self, lease):
        """Back to the pool after a transaction (pooled modes), carrying the client's new settings."""
        server = lease.server
        try:
            if self.schema_changed:
                self.schema_changed = False
                invalidate_all()
            if self.settings.dirty:
                self.settings.dirty = False
                self.settings.set(session_state.capture(server))
            router = self.proxy.router
            took = time.monotonic() - lease.started
            self.proxy.stats.observe(took)
            if router.breakers.enabled and not lease.sick:
                router.breakers.success(server.node)  # (a failure seen meanwhile counted already)
            if router.on and self.identity.home is None:
                router.balancer.finished(server.node, took)
                if lease.intent == "primary":  # may have written: later reads must see it
                    self.route.ryw_lsn = router.write_position(server)
            lease.pool.release(server, reusable=server.tx_status == m.TX_IDLE)
        except Exception as e:  # the pool gets its slot back whatever went wrong
            log.info("%r: ending the lease of %r failed (%s); closing it", self, server, e)
            lease.pool.release(server, reusable=False)
        finally:
            self.idle_lease.set()

    def movable(self):
        """Whether this session may move to another server connection now, unnoticed: session
        pooling, between transactions, nothing outstanding (a pinned pooled client keeps state
        that cannot move)."""
        server = self.server
        return (server is not None and not self.identity.pooled and self.closing is None and not self.plan.owes()
                and server.tx_status == m.TX_IDLE
                and not server.broken)

    def move_off(self):
        """Take an idle session-mode session off its server connection (a planned switchover):
        its settings and prepared statements are read from it and re-created on the server its
        next query leases (on the new primary); the old connection goes back to its pool. Until
        this is done, its next message waits (idle_lease). Returns False if it was not movable."""
        if not self.movable():
            return False
        lease, server = self.lease, self.server
        self.detach()  # from here its next message takes a new lease, after idle_lease is set
        try:
            lease.stop_pump(block=True)
            state = capture(server)  # (continuity/session_migrate.py)
            if state.stateful:  # state that cannot move: it stays (and is ended if it must go)
                self.lease = lease.run()
                return False
            self.settings.set(state.settings)
            self.settings.checked = True
            self.restore = state.statements
            lease.pool.release(server, reset_for_reuse(
                server, self.proxy.config.pool.reset_query, in_flight=False, full_reset=True))
            return True
        except Exception as e:  # it could not be moved: it ends, as before
            log.warning("%r could not be moved off %s (%s)", self, server.node.name, e)
            lease.pool.release(server, reusable=False)
            self.terminate(f"terminating connection: could not move it off {server.node.name}")
            return False
        finally:
            self.idle_lease.set()

    def pin(self, reason):
        """Keep the current (or next) server connection for the rest of the session."""
        if self.identity.pooled and not self.pinned:
            self.pinned = reason
            log.info("%r pinned to its server connection: it uses %s", self, reason)

    def cancel(self):
        """A CancelRequest for this session: cancel its server's query, or stop waiting for a server.
        Returns False when there was nothing to cancel, else True or the greenlet sending it on."""
        if self.server is not None and not self.server.broken:
            return self.server.cancel()
        if self.waiting is not None and not self.waiting.ready():  # out of the queue, error to the client
            self.waiting.set_exception(QueryCanceledWhileWaiting("canceling statement due to user request"))
            return True
        return False

    def release_server(self):
        """At session end: back to the pool if its state is known and clean (pool/reset.py), else closed."""
        lease, self.lease = self.lease, None
        server = lease.server
        reusable = reset_for_reuse(server, self.proxy.config.pool.reset_query,
                                   in_flight=bool(self.plan.outstanding or self.plan.in_extended),
                                   full_reset=not self.identity.pooled or bool(self.pinned) or self.settings.dirty)
        lease.pool.release(server, reusable)
