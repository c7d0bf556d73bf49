"""The Proxy: every part of one proxy process put together (the pools, the router, the topology,
the pipeline, the features), the gevent StreamServer on the client port, the session registry,
signals and shutdown.

Signal handlers only queue a command; `serve_forever` does the work (stop, reload) in the main
greenlet, as gunicorn's arbiter does.
"""
import collections
import logging
import os
import signal
import time

import gevent
from gevent.event import Event
from gevent.pool import Pool as GreenletPool
from gevent.queue import Queue
from gevent.server import StreamServer
from gevent import socket

from . import pipeline
from .admin import server as admin_server
from .analytics import Analytics
from .batch import Batches
from .tenancy import Tenants
from .waits import wait_cancelable
from .cache import QueryCache
from .limits import Limiter
from .limits.admission import Admission
from .limits import shared as limits_table
from .config import load_file
from .config.schema import SETTINGS, TENANT_SETTINGS
from .errors import TOO_MANY_CONNECTIONS, ConfigError
from .own_work import OwnWork
from .protocol import codec
from .plugins.manager import PluginManager
from .pool.pool import PoolManager
from .routing.lag import LagMonitor
from .stats import Stats, StatsSampler
from .topology.switchover_buffer import SwitchoverBuffer
from .topology.failover import FailoverController
from .topology.health import HealthChecker
from .topology.nodeops import NodeOps
from .topology import providers
from .topology.tracker import PENDING, PrimaryTracker
from .routing.router import Router
from .frontend.auth import Authenticator
from .frontend.cancel import CancelMap
from .frontend.answer_watchers import watchers
from .frontend.session import ClientSession, number_sessions
from .frontend.timeouts import SessionTimeouts
from .frontend.listen import parse_address, unix_listener
from .frontend.tls import client_context
from .frontend.userlist import load_userlist
from .frontend.workers import share


def cert_ca(config):
    """The CA that verifies client certificates, when the cert method is used at all."""
    methods = {config.auth.method} | {r.method for r in config.auth.rules}
    return config.auth.cert.ca_file if "cert" in methods else ""

log = logging.getLogger(__name__)
SPARE = 128  # connections beyond max_client_conn accepted at once, to be refused or to cancel
LOCAL = ("[local]", 0)  # the peer of a Unix-socket client, as PostgreSQL shows it


def served_as(config, database):
    """Where and under which name the server side of database is ([databases.NAME] host, port, dbname)."""
    home = config.database_nodes.get(database)
    return (home.host, home.port) if home else None, config.server_dbname(database)


class Proxy:
    def _limits_table(self, config):
        """With several workers, the [[limits]] state they share (limits/shared.py)."""
        index, count = self.worker
        if count <= 1 or not config.limits:
            return None
        path = os.path.join(os.path.dirname(self.admin_socket), limits_table.FILE_NAME)  # (the arbiter's)
        table = limits_table.SharedTable(path, index, count)
        table.forget_worker()  # what a dead predecessor held
        return table

    def __init__(self, config, worker=(0, 1), admin_socket=None, unix_fd=None):
        """worker: (index, count) when this is one of several workers (frontend/workers.py), which
        serves its admin API on admin_socket for the arbiter and accepts on the arbiter's Unix
        socket unix_fd."""
        self.worker, self.admin_socket, self.unix_fd = worker, admin_socket, unix_fd
        self.unix_server = None
        config = share(config, *worker)
        number_sessions(*worker)
        self.config = config
        self.sessions = set()
        self.logging_in = collections.Counter()  # client address -> connections not yet authenticated
        self.cancels = CancelMap(*worker, os.path.dirname(admin_socket) if admin_socket else None)
        self.pools = PoolManager(config)
        self.tls_context = client_context(config.tls, cert_ca(config))
        self.tracker = PrimaryTracker(config, follow=config.topology.provider == "postgres")
        self.buffer = SwitchoverBuffer(self.tracker, config)  # (its health checker: below)
        self.tracker.apply_config(config)
        self.tracker.subscribe(lambda event: self.plugins.notify("on_topology_change", event=event))
        self.router = Router(config, self.tracker)
        self.pools.logins = self.router.breakers  # every login opened or refused (circuit breakers)
        self.plugins = PluginManager(config).load()
        self.plugins.on_refresh = self._plugins_changed
        self.cache = QueryCache(self) if config.cache.enabled else None  # (before the stages that use it)
        self.analytics = Analytics(config, self.cache) if config.analytics.enabled else None  # (analytics/)
        self.own_work = OwnWork()  # transactions run for clients outside sessions (own_work.py)
        self.batches = Batches(self)  # INSERT coalescing (batch/), used while [batch] is enabled
        self.tenants = Tenants(config, TENANT_SETTINGS) if config.tenancy.enabled else None  # (tenancy/)
        self.graphql = None
        if config.graphql.enabled:  # (graphql/: graphql-core, the [graphql] extra)
            from .graphql import Gateway
            self.graphql = Gateway(self)
        self.limits_table = self._limits_table(config)
        self.limiter = Limiter(config, self.limits_table)  # [[limits]] (limits/)
        self.admission = Admission(self)  # every execution against the limits and tenant qps
        self.build_stages(config)
        self.authenticator = Authenticator(config, load_userlist(config.auth.users_file), self.pools,
                                           self.primary)
        self.health = HealthChecker(config, self.authenticator.users, self._health_changed,
                                    self._observed)
        self.router.health = self.health
        self.buffer.health = self.health
        self.ops = NodeOps(config, self.health.credentials)
        self.failover = FailoverController(config, self.tracker, self.health, self.ops)
        self.topology = providers.build(config, self.tracker, self.health, self.buffer)  # who decides the primary (topology/providers.py)
        if self.topology.confirms_primary:  # (the configured primary: a guess until then)
            self.tracker.expect_confirmation(f"the {config.topology.provider} provider")
        self.fleet = None  # a fleet of proxies: coordinated in etcd (fleet_dcs.py), or members listed in Redis
        if config.fleet.dcs_url:
            from .topology.fleet_dcs import FleetCoordinator
            self.fleet = self.failover.fleet = FleetCoordinator(self)
        elif config.fleet.name and config.fleet.redis_url:
            from .topology.fleet import FleetMembership
            self.fleet = FleetMembership(self)
        self.admin = None
        self.stats = Stats()
        self.api_ryw_lsn = None       # WAL position of the last write through POST /api/sql
        self.sampler = StatsSampler(self)
        self.timeouts = SessionTimeouts(self)  # pool.query_timeout, pool.idle_transaction_timeout
        self.paused = {}              # database (None: all) -> Event cleared while PAUSEd (admin)
        self.disabled = set()         # databases whose new logins are refused (DISABLE db, admin console)
        self.suspended = None         # an Event set at RESUME while SUSPENDed (admin)
        self.commands = Queue()
        self.server = self.spawn = None

    def build_stages(self, config):
        """The pipeline for config (pipeline/__init__.py), whether the cache's quick path may
        answer before it, whether the fast path may run them (frontend/fastpath.py), and the
        features that watch the server's answers (frontend/answer_watchers.py)."""
        self.stages = pipeline.build(config, self.plugins)
        self.stages_in_callback = all(stage.callback_safe for stage in self.stages)
        if self.cache is not None:
            self.cache.quick_allowed(self.stages)
        self.at_ready, self.at_error = watchers(self)

    def _plugins_changed(self):
        """A WASM module came, went or changed its hooks: rebuild the pipeline."""
        self.build_stages(self.config)

    # --- topology -----------------------------------------------------------------------------
    def primary(self):
        """The confirmed primary, waiting in the switchover buffer while there is none."""
        return self.buffer.primary()

    def known_primary(self):
        """The primary as last known, confirmed or not (the pool a client's login starts from)."""
        return self.tracker.node(self.tracker.primary)

    def _health_changed(self, node, healthy, reason):
        self.pools.close_idle(node)  # idle connections of a node that went down (or came back) may be dead
        self.tracker.health_changed(node.name, healthy, reason)
        if healthy and self.router.lag is not None:  # fit for reads once its lag is known: measure now
            gevent.spawn(self.router.lag.tick)

    def _observed(self, node, in_recovery, timeline, lsn):
        self.tracker.observe(node.name, in_recovery, timeline, lsn)

    # --- PAUSE / RESUME (admin) -------------------------------------------------------------
    def pause(self, database=None, timeout=30.0):
        """Hold new transactions (of database, or all) and wait until none holds a server
        connection, up to timeout, nor runs one of the proxy's own for clients (own_work.py: a
        batch of INSERTs, an /api/sql or GraphQL request), nor waits for its batch; returns how
        many still do."""
        self.paused.setdefault(database, Event()).clear()
        deadline = time.monotonic() + timeout
        while True:
            holding = sum(1 for s in list(self.sessions)
                          if s.server is not None and (database is None or s.identity.database == database))
            holding += self.own_work.count(database) + self.batches.waiting(database)
            if not holding or time.monotonic() >= deadline:
                return holding
            gevent.sleep(0.01)

    def resume(self, database=None):
        gate = self.paused.pop(database, None)
        if gate is not None:
            gate.set()
        return gate is not None

    def wait_unpaused(self, database, waiting=None):
        """Until RESUME (of all, and of database); waiting: the session's LeaseSlot.wait_on (a cancel
        ends the wait: waits.wait_cancelable)."""
        for key in (None, database):
            gate = self.paused.get(key)
            if gate is not None:
                wait_cancelable(waiting, (gate,))

    # --- SUSPEND / RESUME, RECONNECT / WAIT_CLOSE (admin console, as PgBouncer's) -------------
    def suspend(self, timeout=30.0):
        """Stop accepting connections and taking clients' messages; wait up to timeout until every
        answer under way went out to its client. Returns how many sessions still await one."""
        if self.suspended is None:
            self.suspended = Event()
            for server in (self.server, self.unix_server):
                if server is not None:
                    server.stop_accepting()
        deadline = time.monotonic() + timeout
        while True:
            busy = sum(1 for s in list(self.sessions) if s.plan.owes()) + self.own_work.count() + self.batches.waiting()
            if not busy or time.monotonic() >= deadline:
                return busy
            gevent.sleep(0.01)

    def resume_suspended(self):
        gate, self.suspended = self.suspended, None
        if gate is None:
            return False
        for server in (self.server, self.unix_server):
            if server is not None:
                server.start_accepting()
        gate.set()
        return True

    def reconnect(self, database=None):
        """Close every server connection (of database, or all) once its client is done with it;
        returns how many are still in use."""
        pools = [p for p in list(self.pools.pools.values()) if database is None or p.database == database]
        for pool in pools:
            pool.reconnect()
        return sum(p.closing for p in pools)

    def wait_close(self, database=None, gone=lambda: False):
        """Wait until no server connection (of database, or all) is marked to close, or gone()."""
        while not gone():
            if not any(p.closing for p in list(self.pools.pools.values())
                       if database is None or p.database == database):
                return True
            gevent.sleep(0.05)
        return False

    # --- serving ----------------------------------------------------------------------------
    def start(self):
        if self.config.admin.enabled and self.admin_socket is None:  # first: when clients can connect,
            self.admin = admin_server.start(self)                   # so can operators
        host, port = parse_address(self.config.server.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.worker[1] > 1:  # the workers share the port; the kernel spreads the connections
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((host, port))
        listener.listen(1024)
        self.plugins.notify("on_startup", proxy=self)  # (before the topology's first events)
        self.topology.start()
        probed = self._first_say()
        self.health.start(wait_first=probed)
        if Router.active(self.config):  # standbys are fit for reads once their lag is known: measure
            self.router.lag = LagMonitor(self.router)  # it before the first client is accepted
            with gevent.Timeout(self.config.health.timeout + 1, False):
                self.router.lag.tick()
        if self.fleet is not None:  # (its first read of etcd before the first client: fleet_dcs.py)
            self.fleet.start()
            self.fleet.first_read(self.config.health.timeout + 1)
        # One greenlet per connection, at most max_client_conn + SPARE at once (as started): more
        # wait in the kernel's backlog instead of costing memory (a SPARE few are refused with
        # 53300 or carry cancel requests while the proxy is full).
        self.spawn = GreenletPool(self.config.server.max_client_conn + SPARE)
        self.server = StreamServer(listener, self.handle, spawn=self.spawn)
        self.server.start()
        if self.config.server.unix_socket_dir:  # (several workers: the arbiter made it for all)
            unix = (socket.socket(fileno=self.unix_fd) if self.unix_fd is not None else
                    unix_listener(self.config.server.unix_socket_dir, port, self.config.server.unix_socket_mode))
            self.unix_server = StreamServer(unix, self.handle, spawn=self.spawn)
            self.unix_server.start()
        self.cancels.serve()  # (several workers: cancels for this worker's clients that land on another)
        if self.admin_socket is not None:  # a worker: its socket appearing tells the arbiter it is up
            self.admin = admin_server.start(self, self.admin_socket)
        self.pools.start()
        self.sampler.start()
        self.timeouts.start()
        if self.cache is not None:
            self.cache.start()
        if self.router.lag is not None:
            self.router.lag.start()
        log.info("HeliosProxy listening on %s (pool mode %s, %d node(s))", self.config.server.listen,
                 self.config.pool.mode, len(self.config.nodes))
        if self.config.failover.mode in ("promote", "command") and not self.config.fleet.dcs_url:
            log.warning("failover.mode = %r: this proxy decides a failover alone; that is safe for a "
                        "single proxy only (several proxies, each deciding, can promote two nodes: run "
                        "them behind Patroni with topology.provider = \"patroni\" instead)",
                        self.config.failover.mode)

    def _first_say(self):
        """Where a provider decides which node is the primary (tracker.expect_confirmation), let it
        have its say before the first client is accepted (they wait in the listener's backlog):
        a first round of probes of every node (a second node claiming primary is weighed too), or
        the first read of Patroni's keys; up to health.timeout + 1 s. When the probes cannot tell
        (the configured primary down, or the probe user unable to log in), the configuration is
        trusted, as without them: a client's own attempt then says what is wrong. Patroni is waited
        for (while it cannot be asked, writes wait: Patroni would not let a primary write either).
        True when it probed every node (the health checker's first round is then one interval on)."""
        tracker = self.tracker
        if not tracker.guess:
            return False
        if tracker.follow:
            self.health.probe_all()
            if tracker.guess:
                tracker.confirm_primary("the probes could not tell: the configuration is trusted")
            return True
        deadline = time.monotonic() + self.config.health.timeout + 1
        while tracker.state == PENDING and time.monotonic() < deadline:
            gevent.sleep(0.01)
        return False

    def handle(self, sock, peer):
        if self.suspended is not None:  # SUSPEND (admin): accepted meanwhile, served after RESUME
            self.suspended.wait()
        if sock.family == socket.AF_UNIX:
            peer = LOCAL
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.config.server.tcp_keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        address = peer[0]
        most = self.config.auth.max_unauthenticated_per_address or max(1, self.config.server.max_client_conn // 4)
        if self.logging_in[address] >= most:
            refuse_early(sock, f"too many connections from {address} still logging in "
                               f"(auth.max_unauthenticated_per_address: {most})")
            return
        self.logging_in[address] += 1
        session = ClientSession(self, sock, peer)
        self.sessions.add(session)
        try:
            session.run()
        finally:
            session.logged_in()  # (if it never did, its budget slot is given back now)
            self.sessions.discard(session)
            if session.identity.database is not None:
                self.stats.session_closed(session)

    def close_unix(self):
        if self.unix_server is not None:
            self.unix_server.close()
            self.unix_server = None
            if self.unix_fd is None:  # ours (a worker's belongs to the arbiter)
                path = os.path.join(self.config.server.unix_socket_dir,
                                    f".s.PGSQL.{parse_address(self.config.server.listen)[1]}")
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def install_signals(self):
        for signum, command in ((signal.SIGTERM, "term"), (signal.SIGINT, "int"), (signal.SIGHUP, "hup"),
                                (signal.SIGUSR1, "usr1"), (signal.SIGUSR2, "usr2")):
            gevent.signal_handler(signum, self.commands.put, command)

    def serve_forever(self):
        """Run until SIGTERM (graceful) or SIGINT (immediate); SIGHUP reloads; SIGUSR1 pauses and
        SIGUSR2 resumes (PAUSE and SUSPEND), as PgBouncer's."""
        self.install_signals()  # (first: a signal while it starts waits for its end, never kills it)
        self.start()
        while True:
            command = self.commands.get()
            if command == "hup":
                self.reload()
            elif command == "usr1":  # as PgBouncer's SIGUSR1: PAUSE (new transactions wait)
                log.info("SIGUSR1: pausing every database")
                gevent.spawn(self.pause, None, 30.0)
            elif command == "usr2":  # as PgBouncer's SIGUSR2: RESUME, from PAUSE and from SUSPEND
                log.info("SIGUSR2: resuming")
                self.resume(None)
                self.resume_suspended()
            elif command == "term":
                self.shutdown(self.config.server.shutdown_timeout)
                return
            elif command == "int":
                self.shutdown(0)
                return

    def shutdown(self, timeout):
        log.info("shutting down: %d session(s), waiting up to %g s", len(self.sessions), timeout)
        self.server.close()  # stop accepting
        self.close_unix()
        if self.admin is not None:
            self.admin.stop(timeout=1)
        with gevent.Timeout(timeout, False):
            while self.sessions:
                gevent.sleep(0.05)
        for session in list(self.sessions):
            session.terminate("terminating connection due to administrator command")
        with gevent.Timeout(2, False):
            while self.sessions:
                gevent.sleep(0.02)
        for monitor in (self.health, self.router.lag, self.topology, self.fleet, self.failover, self.sampler,
                        self.timeouts, self.cache):
            if monitor is not None:
                monitor.stop()
        self.pools.close()
        self.cancels.stop()
        self.plugins.notify("on_shutdown", proxy=self)
        self.plugins.close()
        log.info("stopped")

    def reload(self):
        """Re-read the config file and apply what can change without a restart. Returns
        {"reloaded": bool, "restart_required": [setting paths], "error": text or None}."""
        try:
            new = share(load_file(self.config.source), *self.worker)
            users = load_userlist(new.auth.users_file)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            return {"reloaded": False, "restart_required": [], "error": str(e)}
        result = self.apply_config(new, users)
        log.info("configuration reloaded from %s", new.source)
        return result

    def apply_config(self, new, users):
        """Run with new (a reload, or the admin console's SET): what cannot change without a
        restart keeps its running value. Returns reload()'s answer."""
        fixed = [s.path for s in SETTINGS if not s.reloadable and
                 getattr(getattr(new, s.section), s.key) != getattr(getattr(self.config, s.section), s.key)]
        if fixed:
            log.warning("reload: %s need(s) a restart to change; keeping the running values", ", ".join(fixed))
            for path in fixed:
                section, key = path.split(".")
                setattr(getattr(new, section), key, getattr(getattr(self.config, section), key))
        if [vars(n) for n in new.nodes] != [vars(n) for n in self.config.nodes]:
            log.info("reload: nodes changed")
        changed = {db for db in {p.database for p in self.pools.pools.values()}
                   if served_as(self.config, db) != served_as(new, db)}
        self.config = new
        if self.spawn is not None and new.server.max_client_conn + SPARE != self.spawn.size:  # accept bound
            self.spawn = GreenletPool(new.server.max_client_conn + SPARE)
            for server in (self.server, self.unix_server):
                if server is not None:
                    server.set_spawn(self.spawn)
        self.pools.reconfigure(new)
        for pool in list(self.pools.pools.values()):
            if pool.database in changed:  # its server or server-side name changed: new connections
                log.info("reload: database %s changed; its server connections close when released",
                         pool.database)
                pool.reconnect()
        self.router.configure(new)
        if self.router.on and self.router.lag is None:  # splitting turned on by this reload
            self.router.lag = LagMonitor(self.router)
            self.router.lag.start()
        if self.limits_table is None:
            self.limits_table = self._limits_table(new)
        self.limiter = Limiter(new, self.limits_table)  # (running queries give their slots back to the old one)
        self.admission.configure()
        if self.tenants is not None and new.tenancy.enabled:
            self.tenants.configure(new)
        if new.analytics.enabled and self.analytics is not None:
            self.analytics.configure(new)  # (restart_required if it was turned on or off)
        self.build_stages(new)
        self.authenticator.config = new
        self.authenticator.users = users
        self.health.config, self.health.users = new, users
        self.tracker.apply_config(new)
        for part in (self.buffer, self.ops, self.failover, self.topology):
            if part is not None:
                part.config = new
        logging.getLogger().setLevel(new.log.level.upper())
        return {"reloaded": True, "restart_required": fixed, "error": None}


def refuse_early(sock, message):
    """FATAL 53300 to a connection refused before its startup packet is read, then close it."""
    try:
        sock.sendall(codec.error_response(TOO_MANY_CONNECTIONS, message, "FATAL"))
    except OSError:
        pass
    finally:
        sock.close()
