"""A pool of server connections for one (node, database, user), and the manager that owns them."""
import logging
from time import monotonic
from collections import deque

import gevent
from cachetools import LRUCache
from gevent.event import AsyncResult

from ..backend.connection import ServerConnection
from ..periodic import Periodic
from ..errors import BackendError, ProxyError, QUERY_CANCELED

log = logging.getLogger(__name__)
CHECK_DUE = "a server connection due for its check (pool.check_after)"  # take_idle(in_loop=True)


class Pool:
    """Idle connections are reused last-in-first-out; waiting clients are served first-in-first-out."""

    def __init__(self, node, database, credentials, config, manager=None):
        self.manager = manager       # enforces limits across pools (max_db/user_connections)
        self.node = node
        self.database = database
        self.credentials = credentials
        self.config = config
        self.idle = deque()
        self.size = 0                # idle + in use + being opened
        self.waiters = deque()
        self.wait_started = {}       # waiter -> monotonic start, for maxwait
        self.known_statements = LRUCache(maxsize=10000)  # server names parsed OK here (pool/prepared.py)
        self.server_params = None    # ParameterStatus of a fresh connection: greets pooled-mode logins
        self.generation = 0          # RECONNECT (or a reload that changed the database) adds one:
        self.closing = 0             # connections of an older generation close when released
        self.size_cap = None         # a tenant's pool_size (tenancy/), instead of max_size

    @property
    def key(self):
        return (self.node.name, self.database, self.credentials.user, self.credentials.partition)

    def __repr__(self):
        return f"<pool {self.node.name}/{self.database}/{self.credentials.user} size={self.size}>"

    # --- acquire / release ------------------------------------------------------------------
    @property
    def max_size(self):
        return self.size_cap or self.config.pool_setting(self.database, "max_size")

    @property
    def min_size(self):
        return self.config.pool_setting(self.database, "min_size")

    def acquire(self, timeout=None, waiting=None):
        """Return a logged-in, idle server connection; raise ProxyError on timeout or login failure.

        A client that has waited `reserve_timeout` may open up to `reserve_size` connections
        beyond max_size (PgBouncer's reserve pool). `waiting(result)` is told the AsyncResult it
        waits on, so that a cancel can end the wait with set_exception().
        """
        cfg = self.config.pool
        started = monotonic()
        deadline = started + (cfg.acquire_timeout if timeout is None else timeout)
        reserve_at = started + cfg.reserve_timeout if cfg.reserve_size else deadline
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn
            now = monotonic()
            limit = self.max_size + (cfg.reserve_size if now >= reserve_at else 0)
            if self.size < limit and self._room():
                return self._open()
            conn = self._wait(reserve_at if now < reserve_at else deadline, deadline, waiting)
            if conn is not None:
                return conn

    def try_acquire(self):
        """A connection if one is idle or may be opened now, else None (never waits)."""
        conn = self.take_idle()
        if conn is None and self.size < self.max_size and not self.waiters and self._room():
            conn = self._open()
        return conn

    def _room(self):
        return self.manager is None or self.manager.has_room(self)

    def release(self, conn, reusable=True, now=None):
        """Give a connection back; a connection that is not reusable is closed. One with a cancel
        request on its way is held back until the server has taken it. now: time.monotonic(), when
        the caller just asked it."""
        if conn.cancelling:
            cancelling, conn.cancelling = [g for g in conn.cancelling if not g.dead], []
            if cancelling:
                gevent.spawn(self._release_after, cancelling, conn, reusable)
                return
        if now is None:
            now = monotonic()
        lifetime = self.config.pool.server_lifetime
        if (not reusable or conn.broken or conn.generation != self.generation
                or (lifetime and now - conn.created > lifetime)):
            self._discard(conn)
            return
        conn.last_used = now
        while self.waiters:
            waiter = self.waiters.popleft()
            self.wait_started.pop(waiter, None)
            if not waiter.ready():
                waiter.set(conn)
                return
        self.idle.append(conn)
        if conn.watched:  # stray bytes or EOF while idle: its server went away, or it is unclean
            conn.on_readable = conn.idle_check or self._idle_checker(conn)
        manager = self.manager
        if manager is not None and manager.limited:  # an idle connection here may make room for a sibling's waiter
            manager.room_freed(self)

    def _idle_checker(self, conn):
        def stray():
            conn.on_readable = None
            if conn in self.idle:
                log.info("%r: %r sent something while idle (closed, or stray bytes); closing it", self, conn)
                self.idle.remove(conn)
                self._discard(conn)
        conn.idle_check = stray
        return stray

    def _release_after(self, cancelling, conn, reusable):
        gevent.joinall(cancelling, timeout=5)
        self.release(conn, reusable and all(g.dead for g in cancelling))

    def take_again(self, conn, now):
        """Whether conn, a connection its caller gave back, is taken again: only while it is the
        idle one on top (none came back after it, none took it) and may go on as it is by
        take_idle's rules (watched, open, nothing read on it left, no check due, within its
        lifetime). Else it stays idle, and take_idle decides. now: time.monotonic()."""
        idle = self.idle
        if not idle or idle[-1] is not conn or not conn.watched or conn.broken:
            return False
        rbuf = conn.rbuf  # (rbuf.pending(), its two fields read here: a call less per transaction)
        if len(rbuf.buf) != rbuf.pos:
            return False
        cfg = self.config.pool
        if now - conn.last_used >= cfg.check_after or cfg.server_lifetime and now - conn.created > cfg.server_lifetime:
            return False
        idle.pop()
        conn.on_readable = None  # (take_idle's: its pool's idle check no longer)
        return True

    def take_idle(self, in_loop=False):
        """An idle connection that passed its checks, or None (never opens one). A connection
        unused for pool.check_after is checked with pool.check_query first, which waits for the
        server: from a loop callback (in_loop), where nothing may wait, such a connection stays
        idle and the answer is CHECK_DUE (a greenlet's take checks it)."""
        cfg, idle = self.config.pool, self.idle
        while idle:
            conn = idle[-1]
            now = monotonic()
            due = now - conn.last_used >= cfg.check_after
            if due and in_loop:
                return CHECK_DUE  # (it stays idle, watched as it was: a greenlet's take checks it)
            idle.pop()
            if conn.watched:  # its read watcher would have reported EOF or stray bytes
                conn.on_readable = None
                clean = not conn.broken and not conn.rbuf.pending()
            else:
                clean = conn.idle_and_clean()
            if not clean or cfg.server_lifetime and now - conn.created > cfg.server_lifetime:
                self._discard(conn)
                continue
            if due:
                try:
                    conn.execute(cfg.check_query)
                except (BackendError, OSError) as e:
                    log.info("%r failed its health check (%s); closing it", conn, e)
                    self._discard(conn)
                    continue
                except BaseException:  # (neither idle nor lent: never lost to the pool's count)
                    self._discard(conn)
                    raise
            return conn
        return None

    def _open(self):
        self.size += 1
        generation = self.generation
        try:
            try:
                conn = ServerConnection(self.node, self.config.server_dbname(self.database), self.credentials,
                                        self.config).connect()
            except (BackendError, OSError) as e:
                if self.manager is not None and self.manager.logins is not None:
                    self.manager.logins.refused(self.node, e)  # (circuit breakers: topology/breaker.py)
                raise
            if self.manager is not None and self.manager.logins is not None:
                self.manager.logins.opened(self.node)
            conn.generation = generation
            if self.server_params is None:
                self.server_params = dict(conn.params)
            return conn
        except BaseException:
            self.size -= 1
            if generation != self.generation:
                self.closing -= 1
            self._wake_one()
            raise

    def _wait(self, until, deadline, waiting=None):
        """Wait in line until `until`: a connection handed over, or None to look again."""
        waiter = AsyncResult()
        if waiting is not None:
            waiting(waiter)
        self.line_up(waiter)
        try:
            return waiter.get(timeout=max(0.0, until - monotonic()))
        except gevent.Timeout:
            if waiter.ready() and waiter.successful():
                return waiter.get()
            if monotonic() < deadline:
                return None
            raise self.timed_out() from None
        finally:
            self.leave_line(waiter)

    def timed_out(self):
        """The error of a client that waited pool.acquire_timeout in line."""
        return ProxyError(f"timed out after {self.config.pool.acquire_timeout:g} s waiting for a server "
                          f"connection (pool {self.node.name}/{self.database}/{self.credentials.user} "
                          f"has {self.size} of max_size {self.max_size} in use)", sqlstate=QUERY_CANCELED)

    def line_up(self, waiter):
        """waiter waits in line (an AsyncResult, or a request without a greenlet: frontend/queued.py
        Queued, with ready() and set(conn) too): release() serves them in turn."""
        self.waiters.append(waiter)
        self.wait_started[waiter] = monotonic()

    def leave_line(self, waiter):
        self.wait_started.pop(waiter, None)
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def _discard(self, conn):
        conn.close()
        self.size -= 1
        if conn.generation != self.generation:
            self.closing -= 1
        self._wake_one()
        if self.manager is not None:
            self.manager.room_freed(self)

    def _wake_one(self):
        """A slot freed up: let the first waiter open a connection of its own."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.ready():
                waiter.set(None)
                return

    # --- maintenance ------------------------------------------------------------------------
    def maintain(self):
        """Close connections idle too long or too old; open up to min_size."""
        cfg, now = self.config.pool, monotonic()
        keep = deque()
        while self.idle:
            conn = self.idle.popleft()
            too_idle = cfg.idle_timeout and now - conn.last_used > cfg.idle_timeout and self.size > self.min_size
            too_old = cfg.server_lifetime and now - conn.created > cfg.server_lifetime
            if too_idle or too_old:
                self._discard(conn)
            else:
                keep.append(conn)
        self.idle.extend(keep)
        while self.size < self.min_size and not self.waiters and self._room():
            try:
                self.release(self._open())
            except (ProxyError, OSError) as e:
                log.warning("%r: could not open a connection to reach min_size: %s", self, e)
                break

    def reconnect(self):
        """Close the idle connections now and every other one when it is released (PgBouncer's
        RECONNECT; a reload that changed this database's host, port or dbname)."""
        self.close_idle()
        self.generation += 1
        self.closing = self.size
        if not self.size:
            self.server_params = None  # (a new server may report other parameters)

    def close_idle(self):
        while self.idle:
            self._discard(self.idle.pop())

    def stats(self):
        now = monotonic()
        return {"node": self.node.name, "database": self.database, "user": self.credentials.user,
                "sv_idle": len(self.idle), "sv_active": self.size - len(self.idle),
                "cl_waiting": len(self.waiters),
                "maxwait": max((now - t for t in self.wait_started.values()), default=0.0)}


class PoolManager(Periodic):
    """Owns every pool, creates them on first use, and runs their maintenance every second."""

    def __init__(self, config):
        self.config = config
        self.pools = {}
        self.limited = self._has_limits(config)
        self.partition_sizes = {}  # tenant -> its pool_size (tenancy/): its pools on every node
        self.logins = None  # told of every login opened or refused (the circuit breakers), when set

    def get(self, node, database, credentials):
        key = (node.name, database, credentials.user, credentials.partition)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(node, database, credentials, self.config, self)
        if credentials.partition is not None:  # (its size may have changed: PUT /tenants/NAME)
            pool.size_cap = self.partition_sizes.get(credentials.partition)
        elif credentials.known and (credentials.password is not None or credentials.client_key):
            pool.credentials = credentials  # the freshest login wins (password changed, SCRAM keys)
        return pool

    # --- limits across pools -------------------------------------------------------------------
    def has_room(self, pool):
        """Whether pool may open one more connection under max_db/max_user_connections; if not,
        close an idle connection of a sibling pool to make room when one exists."""
        for siblings, cap in self._limits(pool):
            if sum(p.size for p in siblings) >= cap:
                idle = next((p for p in siblings if p.idle and p is not pool), None)
                if idle is None:
                    return False
                idle._discard(idle.idle.popleft())
        return True

    def room_freed(self, pool):
        """A connection closed: a client waiting in a sibling pool held back by a limit may go on."""
        if not self.limited:  # every release calls this: no cross-pool limit, nothing to do
            return
        for siblings, _ in self._limits(pool):
            for other in siblings:
                if other is not pool and other.waiters:
                    other._wake_one()
                    return

    def _limits(self, pool):
        cfg, user = self.config, pool.credentials.user
        if cfg.pool.max_db_connections:
            yield [p for p in self.pools.values() if p.database == pool.database], cfg.pool.max_db_connections
        user_cap = cfg.user_setting(user, "max_connections") or cfg.pool.max_user_connections
        if user_cap:
            yield [p for p in self.pools.values() if p.credentials.user == user], user_cap

    @staticmethod
    def _has_limits(config):
        return bool(config.pool.max_db_connections or config.pool.max_user_connections
                    or any(u.max_connections for u in config.users.values()))

    def reconfigure(self, config):
        self.config = config
        self.limited = self._has_limits(config)
        for pool in self.pools.values():
            pool.config = config

    def interval(self):
        return 1.0

    def tick(self):
        for pool in list(self.pools.values()):
            try:
                pool.maintain()
            except Exception:  # one pool's trouble must not stop the others' maintenance
                log.exception("maintenance of %r failed", pool)

    def close_idle(self, node):
        """Close the idle connections of every pool of node."""
        for pool in list(self.pools.values()):
            if pool.node.name == node.name:
                pool.close_idle()

    def close(self):
        self.stop()
        for pool in self.pools.values():
            pool.close_idle()
