"""A session's hold on server connections (the spec's pool::session side of a lease): its home pool,
the lease it has now (pool/lease.py), the pump reused from lease to lease (relay.py), whether a
lease is being ended, what it waits on for a server, the prepared statements to re-create at its
next lease, and why it keeps its server connection (pinned).

It takes a lease where the route stage sent the next transaction (a standby that fails or lags
behind the client's last write gives way to the primary; while there is no primary it waits in
the switchover buffer), applies the client's settings and tenant proof to it, and ends it at the
ReadyForQuery its pool mode says (relay.py asks `ends_here`): the client's new settings are read
back, read-your-writes notes the write position, and the server connection goes back to its pool.
It is the only writer of its fields (besides the login, which attaches the first lease, and the
relay, which makes the pump once).
"""
import logging
from time import monotonic

import gevent
from gevent.event import Event

from ..errors import QUERY_CANCELED, BackendError, ProxyError, node_unreachable
from ..jobs import JOBS
from ..pool import prepared, session_state
from ..pool.lease import Lease, ends_here
from ..pool.pool import CHECK_DUE
from ..pool.reset import reset_for_reuse
from ..backend.statements import invalidate_all
from ..continuity.session_migrate import capture
from ..protocol import messages as m
from . import handshake, relay

log = logging.getLogger(__name__)
TX_IDLE = m.TX_IDLE


class QueryCanceledWhileWaiting(ProxyError):
    sqlstate = QUERY_CANCELED


class LeaseSlot:
    __slots__ = ("session", "lease", "pool", "pump", "idle", "waiting", "restore", "pinned", "spare")

    def __init__(self, session):
        self.session = session
        self.lease = None         # pool/lease.py: the server connection lent to it now
        self.pool = None          # its home pool (credentials; the primary's, or its database's host)
        self.pump = None          # relay.CallbackPump, made at the first lease, reused
        self.idle = Event()       # set while no lease is being ended
        self.idle.set()
        self.waiting = None       # the AsyncResult it waits on for a server, while it waits
        self.restore = None       # prepared statements to re-create at the next lease (move_off)
        self.pinned = None        # why this client keeps its server connection (pooled modes)
        self.spare = None         # the last lease, given back in a loop callback: the next one reuses it

    @property
    def server(self):
        """The leased server connection, or None between leases."""
        lease = self.lease
        return lease.server if lease is not None else None

    def attach(self, pool, server):
        """The login's server connection becomes the session's lease (its pump starts in run())."""
        self.pool, self.lease = pool, Lease(self.session, pool, server)

    def hand_back(self):
        """Pooled modes: the login's server connection goes back to its pool once it greeted the client."""
        lease, self.lease = self.lease, None
        lease.end()

    def take(self):
        """Lease a server connection for the next transaction (pooled modes) and start its pump."""
        self.idle.wait()
        session = self.session
        proxy = session.proxy
        if proxy.paused:  # PAUSE (admin): new transactions wait for RESUME
            proxy.wait_unpaused(session.identity.database, self.wait_on)
        target, intent, pool, server = self._acquire_routed()
        try:
            settings = session.settings
            if settings.checked:
                if server.settings_key != settings.key:  # else it carries them already
                    session_state.apply(server, settings.values, settings.key)
            else:  # greeted without a server: the startup settings are checked now, FATAL if bad
                handshake.apply_settings(server, settings.values)
                settings.applied()
        except BaseException:
            pool.release(server, reusable=server.tx_status == m.TX_IDLE and not server.broken)
            raise
        if session.identity.tenant is not None:  # helios.tenant() proven anew on every lease (tenancy/proof.py)
            try:
                proxy.tenants.establish(server, session.identity.tenant)
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
        self.begin(pool, server, target, intent)

    def begin(self, pool, server, target, intent):
        """The lease on server begins: counted where it went, its pump started. (take_again() begins
        the lease of a session at rest the same way, inline: begin()'s call and its general cases
        cost ~940 instructions a transaction there; a step added here belongs there too.)"""
        session = self.session
        router = session.proxy.router
        router.leased[target].append(server.node.name)  # (router.counts() adds it up)
        if router.on and session.identity.home is None:
            router.balancer.started(server.node)
        lease = self.spare
        if lease is not None:
            self.spare = None
            lease = self.lease = lease.again(pool, server, target, intent)
        else:
            lease = self.lease = Lease(session, pool, server, target, intent)
        pump = self.pump
        if pump is not None and server.raw is not None:  # (relay.start's usual case: its callback pump)
            lease.pump = pump.begin(lease)
        else:
            lease.pump = relay.start(session, lease)  # (lease.run(), without a call more per transaction)

    def take_again(self):
        """take_now() for a session at rest (frontend/fastpath.py): its last lease, ended in a loop
        callback (spare), goes on with the same server connection when that connection is still
        the idle one on top of the session's home pool and everything take_now() would decide is as
        it was then: nothing aimed elsewhere (the primary), the primary ready there (no switchover
        pause, its breaker closed), no tenant to prove, no statements to re-create, no database of
        its own, the client's settings on it (Pool.take_again asks the pool's rules). The lease
        begins as begin() begins one. True when it did; False: take_now() decides."""
        lease = self.spare
        session = self.session
        proxy, who = session.proxy, session.identity
        pool, server = lease.pool, lease.server
        if (session.route.next_target is not None or pool is not self.pool or server.settings_key is not session.settings.key
                or self.restore or who.tenant is not None or who.home is not None or proxy.config.database_nodes):
            return False
        node = None if proxy.buffer.paused else proxy.tracker.confirmed  # (buffer.ready(), inline: a call less)
        router = proxy.router
        breakers = router.breakers
        if node is None or node.name != pool.node.name or breakers.enabled and not breakers.allows(node):
            return False
        now = monotonic()  # (one clock read for the pool's rules and the lease's start)
        if not pool.take_again(server, now):
            return False
        router.leased["primary"].append(node.name)  # (begin(), inline, as it is for this lease: keep them alike)
        if router.on:
            router.balancer.started(server.node)
        self.spare = None
        lease = self.lease = lease.again(pool, server, "primary", "primary", now)  # (its start: the take's time)
        lease.pump = self.pump.begin(lease)
        return True

    def take_now(self):
        """take() from a loop callback (the fast path): a lease only where nothing must wait or be
        done to the server connection first (an idle one in its pool, carrying the client's
        settings; no tenant proof, no statements to re-create, no read-your-writes question, no
        database of its own). True when leased, its pump started; (pool, target) when the pool has
        no idle connection and may open none (the request may wait in its line); CHECK_DUE when the
        connection at hand must be checked first (pool.check_after: the check waits); else False. Unless leased,
        the route's decision stays for take(), with the standby the balancer chose named (its turn
        is not taken twice)."""
        session = self.session
        proxy, who = session.proxy, session.identity
        if self.restore or who.tenant is not None or who.home is not None or proxy.config.database_nodes:
            return False
        route, router = session.route, proxy.router
        aim, node = route.next_target, None
        if aim is not None and (aim[0] != "primary" or aim[1] is not None):  # (None: the primary, the usual)
            target, node_name = aim
            node = router.pick(target, node_name, route.next_lag)
        if node is not None:
            if node_name is None:  # (the balancer chose it: take() tries the same node, not the next one)
                route.aim((target, node.name), route.next_lag, route.next_tables)
            if target == "standby" and route.ryw_lsn and router.replayed.get(node.name, -1) < route.ryw_lsn:
                return False  # (whether it replayed the client's last write must be asked: take() does)
            pool = proxy.pools.get(node, who.database, self.pool.credentials)
        else:
            target = "primary"
            pool = self.pool
            node = proxy.buffer.ready()
            breakers = router.breakers
            if node is None or node.name != pool.node.name or breakers.enabled and not breakers.allows(node):
                return False
        server = pool.take_idle(True)  # (in_loop: a positional argument is the cheaper call)
        if server is None:  # (a full pool: the request may wait in its line, frontend/queued.py)
            return (pool, target) if pool.size >= pool.max_size and not pool.config.pool.reserve_size else False
        if server is CHECK_DUE:  # (its check query waits for the server: take()'s)
            return CHECK_DUE
        return self.take_from(pool, server, target)

    def take_from(self, pool, server, target):
        """take_now()'s end, also for a connection its pool handed to a request waiting in line:
        the lease on server begins, where the route's decision sent it (False, the connection back
        to its pool, when it does not carry the client's settings: applying them is take()'s; or
        when it speaks TLS ([tls] server_mode = prefer): its pump is a greenlet, only one may write to it)."""
        session = self.session
        key = session.settings.key  # (settings_key: equal keys are usually one object, `is` decides at once)
        if server.settings_key is not key and server.settings_key != key or server.raw is None:  # (raw None: TLS)
            pool.release(server)
            return False
        route = session.route
        aim = route.next_target
        if aim is None:  # (nothing aimed: a lag or tables come only with an aim, routing/state.py)
            intent = "primary"
        else:  # (used up)
            intent = aim[0]
            if route.next_tables:
                session.proxy.router.tables.count(route.next_tables, server.node.name)
            route.next_target = route.next_lag = route.next_tables = None
        self.begin(pool, server, target, intent)
        return True

    def _acquire_routed(self):
        """(target, intent, pool, server) where the route stage sent the next transaction; the primary when
        that standby is unreachable or has not replayed the client's last write in time."""
        session = self.session
        router = session.proxy.router
        route = session.route  # (RouteState.take(), inline: a call less per transaction)
        target, node_name = route.next_target or ("primary", None)
        lag, tables = route.next_lag, route.next_tables
        route.next_target = route.next_lag = route.next_tables = None
        intent = target  # a read that falls back to the primary is still a read
        node = router.pick(target, node_name, lag) if session.identity.home is None else None
        if node is not None:
            pool = session.proxy.pools.get(node, session.identity.database, self.pool.credentials)
            try:
                server = self._acquire(pool)
            except BackendError as e:  # a standby that fails is not the client's failure
                router.unreachable(node, e.message, e)
            else:
                if target != "standby" or not route.ryw_lsn or self._replayed(router, pool, server):
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
        session = self.session
        proxy, who = session.proxy, session.identity
        if who.home is not None or proxy.config.database_nodes:  # (a reload may move its database)
            who.home = proxy.config.database_nodes.get(who.database)
            if who.home is not None:  # a database outside the cluster: its one server, no failover
                if who.home.name != self.pool.node.name:
                    self.pool = proxy.pools.get(who.home, who.database, self.pool.credentials)
                return self.pool, self._acquire(self.pool)
        node = proxy.buffer.ready()
        breakers = proxy.router.breakers
        if node is not None and node.name == self.pool.node.name and (
                not breakers.enabled or breakers.allows(node)):  # the usual case: its own pool
            server = self.pool.take_idle()
            if server is not None:
                return self.pool, server
        deadline = monotonic() + proxy.config.failover.buffer_timeout
        while True:
            try:
                node = proxy.buffer.primary(deadline, self.wait_on)
            finally:
                self.waiting = None
            breakers.check(node)  # open: 57P03 at once, nothing else can take the transaction
            if node.name != self.pool.node.name:  # the primary changed: this client's home pool too
                self.pool = proxy.pools.get(node, who.database, self.pool.credentials)
            try:
                return self.pool, self._acquire(self.pool)
            except (BackendError, OSError) as e:
                if not node_unreachable(e) or monotonic() >= deadline or not proxy.buffer.failover_possible():
                    raise  # (nothing to wait for: PostgreSQL's connection error, at once)
                proxy.router.suspect(node, getattr(e, "message", None) or str(e))
                gevent.sleep(0.05)

    def set_home(self, pool):
        """The session's home pool: the login's, or the primary's a replay found elsewhere."""
        self.pool = pool
        return pool

    def _acquire(self, pool):
        counters = self.session.counters
        counters.wait_started = monotonic()
        try:
            return pool.acquire(waiting=self.wait_on)
        finally:
            counters.wait_seconds += monotonic() - counters.wait_started
            self.waiting = counters.wait_started = None

    def _replayed(self, router, pool, server):
        """Read-your-writes: has this standby replayed the client's last write? If not, give it back."""
        try:
            fresh = router.caught_up(server.node, server, self.session.route.ryw_lsn)
        except BaseException:
            pool.release(server, reusable=False)
            raise
        if not fresh:
            pool.release(server)
        return fresh

    def wait_on(self, result):
        """What the session waits on for a server connection (a cancel ends the wait), or None."""
        self.waiting = result

    def release_if_idle(self):
        """After the proxy answered a request itself: end a lease the server has nothing left for."""
        lease = self.lease
        if lease is not None and ends_here(self.session, lease.server):
            lease.stop_pump(block=False)  # it waits for the server; nothing more will come
            self.detach()
            self.ended(lease, None)

    def detach(self):
        """The lease is ending: from now on the next message needs a new one (once idle is set)."""
        self.lease = None
        self.idle.clear()

    def ended(self, lease, out, in_loop=False):
        """The pump saw the lease's last answer (by its pool mode's rule): the client gets the last
        bytes (out), the server goes back to its pool carrying the client's new settings, and the
        session's next message may go on (idle). From a loop callback (in_loop), an end that must
        ask the server something (settings, WAL position) runs in a worker greenlet (this method
        again, out given); else it ends here at once and the lease stays the slot's spare (the
        fast path's take_again). One method for every end: a call less per transaction."""
        self.lease = None  # before the client can send its next query
        session = self.session
        try:
            if out:
                session.writer.write(out)
        except OSError:
            pass  # the client is gone: its reader sees it; the server is idle and goes back clean
        proxy = session.proxy
        router = proxy.router
        if not in_loop:
            self.idle.clear()
        elif session.settings.dirty or router.on and session.identity.home is None and lease.intent == "primary":
            self.idle.clear()
            JOBS.submit(self.ended, lease, None)
            return
        server = lease.server
        try:
            if session.statements.schema_changed and session.statements.take_schema_change():
                invalidate_all()
            if session.settings.dirty:
                session.settings.read_back(session_state.capture(server))
            now = monotonic()
            took = now - lease.started
            proxy.stats.took.append(took)  # (added up later: Stats.add_up)
            if router.breakers.enabled and not lease.sick:
                router.breakers.success(server.node)  # (a failure seen meanwhile counted already)
            if router.on and session.identity.home is None:
                router.balancer.finished(server.node, took)
                if lease.intent == "primary":  # may have written: later reads must see it
                    session.route.wrote(router.write_position(server))
            lease.pool.release(server, server.tx_status == TX_IDLE, now)  # (lease.end(), inline)
        except Exception as e:  # the pool gets its slot back whatever went wrong
            log.info("%r: ending the lease of %r failed (%s); closing it", session, server, e)
            lease.end(reusable=False)
        finally:
            if in_loop:  # (at once, in this callback: nothing ran in between, nothing needed to wait)
                self.spare = lease  # (nothing holds it now: the pump let it go before this call)
            else:
                self.idle.set()

    def movable(self):
        """Whether this session may move to another server connection now, unnoticed: session
        pooling, between transactions, nothing outstanding (a pinned pooled client keeps state
        that cannot move)."""
        server, session = self.server, self.session
        return (server is not None and not session.identity.pooled and session.closing is None
                and not session.plan.owes() and server.tx_status == m.TX_IDLE and not server.broken)

    def move_off(self):
        """Take an idle session-mode session off its server connection (a planned switchover):
        its settings and prepared statements are read from it and re-created on the server its
        next query leases (on the new primary); the old connection goes back to its pool. Until
        this is done, its next message waits (idle). Returns False if it was not movable."""
        if not self.movable():
            return False
        session = self.session
        lease, server = self.lease, self.server
        self.detach()  # from here its next message takes a new lease, after idle is set
        try:
            lease.stop_pump(block=True)
            state = capture(server)  # (continuity/session_migrate.py)
            if state.stateful:  # state that cannot move: it stays (and is ended if it must go)
                self.lease = lease.run()
                return False
            session.settings.set(state.settings)
            session.settings.applied()
            self.restore = state.statements
            lease.end(reset_for_reuse(
                server, session.proxy.config.pool.reset_query, in_flight=False, full_reset=True))
            return True
        except Exception as e:  # it could not be moved: it ends, as before
            log.warning("%r could not be moved off %s (%s)", session, server.node.name, e)
            lease.end(reusable=False)
            session.terminate(f"terminating connection: could not move it off {server.node.name}")
            return False
        finally:
            self.idle.set()

    def pin(self, reason):
        """Keep the current (or next) server connection for the rest of the session."""
        if self.session.identity.pooled and not self.pinned:
            self.pinned = reason
            log.info("%r pinned to its server connection: it uses %s", self.session, reason)

    def cancel(self):
        """A CancelRequest for this session: cancel its server's query, or stop waiting for a server.
        Returns False when there was nothing to cancel, else True or the greenlet sending it on. A
        wait comes first: the request waits for it (a pool's line, a batch, a limit, also inside a
        transaction whose server is idle meanwhile)."""
        waiting = self.waiting
        if waiting is not None and not waiting.ready():  # out of the queue, error to the client
            waiting.set_exception(QueryCanceledWhileWaiting("canceling statement due to user request"))
            return True
        server = self.server
        if server is not None and not server.broken:
            return server.cancel()
        return False

    def release(self):
        """At session end: back to the pool if its state is known and clean (pool/reset.py), else closed."""
        session = self.session
        lease, self.lease = self.lease, None
        server = lease.server
        reusable = reset_for_reuse(server, session.proxy.config.pool.reset_query,
                                   in_flight=bool(session.plan.outstanding or session.plan.in_extended),
                                   full_reset=not session.identity.pooled or bool(self.pinned)
                                   or session.settings.dirty)
        lease.end(reusable)
