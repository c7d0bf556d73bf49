"""The switchover buffer: while there is no confirmed primary (a failover or a planned switchover
is under way), new write transactions wait here instead of failing, and go on in arrival order to
the new primary once it is confirmed. Bounded: at most `failover.buffer_max_queries` clients wait
at once and none longer than `failover.buffer_timeout`; beyond that they get SQLSTATE 57P03 with a
message that says a failover is in progress. Once no failover can come (no healthy standby left
to promote, nothing planned), the clients waiting get 08006 at once, as a new arrival does. Reads
to standbys never pass through here.
"""
import logging
import time
from collections import deque

from gevent import Timeout
from gevent.event import AsyncResult

from ..errors import CANNOT_CONNECT_NOW, CONNECTION_FAILURE, ProxyError
from .tracker import PENDING

log = logging.getLogger(__name__)


class FailoverInProgress(ProxyError):
    sqlstate = CANNOT_CONNECT_NOW


class NoPrimary(ProxyError):
    """Nothing to wait for: PostgreSQL's own connection failure, at once."""
    sqlstate = CONNECTION_FAILURE


class SwitchoverBuffer:
    def __init__(self, tracker, config, health=None):
        self.tracker = tracker
        self.config = config
        self.health = health      # HealthChecker: is there a standby a failover could promote?
        self.paused = None        # why new transactions are held even with a confirmed primary
        self.waiters = deque()    # AsyncResults of waiting clients, first come first served
        self.buffered = 0         # clients that waited here, since start (metrics)
        self.timeouts = 0         # of which gave up with 57P03
        self.longest_wait = 0.0   # seconds, since start
        tracker.subscribe(lambda event: self._drain())

    @property
    def depth(self):
        return len(self.waiters)

    def pause(self, reason):
        """Hold every new primary transaction (planned switchover) until resume()."""
        self.paused = reason

    def resume(self):
        self.paused = None
        self._drain()

    def ready(self):
        """The confirmed primary if a transaction may go there now, else None (never waits)."""
        return None if self.paused else self.tracker.confirmed  # (tracker.current(): its field)

    def _drain(self):
        """At every topology event: the waiters go on once a primary is ready, or learn at once
        that none can come (the last standby down or fenced: no failover to wait for)."""
        if self.ready() is None and self.failover_possible():
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.ready():
                waiter.set(True)

    def failover_possible(self):
        """Whether waiting can end in a new primary: a planned switchover, or some enabled standby
        that is healthy (promoted by the proxy, Patroni or an operator). Without one, a client is
        answered at once instead of waiting for a failover that cannot happen. A PENDING primary
        (being promoted, or the configured one at start) is waited for too."""
        if self.paused or self.tracker.state == PENDING:
            return True
        return any(self.health is None or self.health.healthy(n) for n in self.tracker.standbys())

    def _no_primary(self):
        return NoPrimary(f"no primary available ({self.tracker.reason or 'primary not confirmed'}) and no "
                         "standby to fail over to")

    def _why(self):
        return self.paused or f"failover in progress; {self.tracker.reason or 'primary not confirmed yet'}"

    def primary(self, deadline=None, waiting=None):
        """The confirmed primary, waiting for one up to `deadline` (monotonic; default: now +
        buffer_timeout). `waiting(result)` is told what it waits on, so that a cancel can end it."""
        node = self.ready()
        if node is not None:
            return node
        if not self.failover_possible():
            raise self._no_primary()
        cfg = self.config.failover
        if deadline is None:
            deadline = time.monotonic() + cfg.buffer_timeout
        if len(self.waiters) >= cfg.buffer_max_queries:
            self.timeouts += 1
            raise FailoverInProgress(f"no primary available ({self._why()}); {len(self.waiters)} clients already "
                                     f"wait for one (failover.buffer_max_queries)")
        started = time.monotonic()
        self.buffered += 1
        try:
            while node is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.timeouts += 1
                    raise FailoverInProgress(f"no primary available ({self._why()}); waited "
                                             f"{time.monotonic() - started:.1f} s (failover.buffer_timeout)")
                waiter = AsyncResult()
                if waiting is not None:
                    waiting(waiter)
                self.waiters.append(waiter)
                try:
                    waiter.get(timeout=remaining)
                except Timeout:
                    pass
                finally:
                    try:
                        self.waiters.remove(waiter)
                    except ValueError:
                        pass
                node = self.ready()
                if node is None and not self.failover_possible():  # (what a new arrival gets now)
                    raise self._no_primary()
            return node
        finally:
            self.longest_wait = max(self.longest_wait, time.monotonic() - started)
