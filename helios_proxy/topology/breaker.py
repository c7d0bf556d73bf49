"""Circuit breakers, one per node: what the health probes do not see. A node can answer the probe
user and still fail the application (a pg_hba.conf change, its connection limit, a broken
extension); its breaker watches what clients get from it.

It counts what the proxy itself sees, never an error a client's statement raised (any client can
raise XX000 in a DO block): each lease that ends cleanly is a success; a login the proxy attempts
that the node refuses (pg_hba.conf, 53300 too many connections, 57P03...; counted wherever a pool
opens a connection) and a connection lost under a lease are failures. Over the last `window_s`, at least `min_requests` outcomes of which
`failure_rate` or more failed trip the breaker (and `min_requests` refused logins in a row, whatever
the leases of connections opened before did): OPEN, the node gets no reads (they go to the other
standbys, or the primary) for `open_s`. Then HALF_OPEN: traffic again, and the next
`half_open_requests` outcomes decide: all good -> CLOSED; one failure -> OPEN again for twice as
long (adaptive), up to `max_open_s`.

The primary counts the same way, except that a primary that cannot be reached at all is the
health checker's and failover's business (its transactions wait in the switchover buffer). While
the primary's breaker is open nothing else can take its transactions: they fail at once with
57P03 (BreakerOpen) instead of piling up on a node that refuses them; in HALF_OPEN they go again.
"""
import collections
import logging
import time

from ..errors import CANNOT_CONNECT_NOW, ProxyError, node_unreachable

log = logging.getLogger(__name__)
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class BreakerOpen(ProxyError):
    sqlstate = CANNOT_CONNECT_NOW


class Breaker:
    __slots__ = ("cfg", "name", "state", "outcomes", "opened", "open_s", "trial", "trips", "reason", "refusals")

    def __init__(self, cfg, name):
        self.cfg, self.name = cfg, name
        self.state = CLOSED
        self.outcomes = collections.deque()  # (time, ok)
        self.opened = 0.0
        self.open_s = cfg.open_s
        self.trial = self.trips = 0
        self.reason = None
        self.refusals = 0  # logins refused in a row (a login that works sets it back)

    def allows(self, now):
        if self.state == OPEN and now >= self.opened + self.open_s:
            self.state, self.trial = HALF_OPEN, 0
            log.info("breaker of %s half open: trying it again", self.name)
        return self.state != OPEN

    def record(self, ok, now, why=None):
        cfg = self.cfg
        if self.state == HALF_OPEN:
            if not ok:
                self._trip(now, min(self.open_s * 2, cfg.max_open_s), why)
                return
            self.trial += 1
            if self.trial >= cfg.half_open_requests:
                self.state, self.open_s, self.reason = CLOSED, cfg.open_s, None
                self.outcomes.clear()
                log.info("breaker of %s closed: it serves again", self.name)
            return
        if self.state == OPEN:
            return
        outcomes = self.outcomes
        outcomes.append((now, ok))
        while outcomes and outcomes[0][0] < now - cfg.window_s:
            outcomes.popleft()
        if not ok and len(outcomes) >= cfg.min_requests:
            failed = sum(1 for _, good in outcomes if not good)
            if failed >= cfg.failure_rate * len(outcomes):
                self._trip(now, self.open_s, why)

    def refused(self, now, why):
        """A login the proxy attempted was refused: a failure, and min_requests of them in a row trip
        the breaker whatever the leases on connections opened before did (they were let in then)."""
        self.refusals += 1
        if self.state == CLOSED and self.refusals >= self.cfg.min_requests:
            self._trip(now, self.open_s, why)
        else:
            self.record(False, now, why)

    def _trip(self, now, open_s, why):
        self.state, self.opened, self.open_s, self.reason = OPEN, now, open_s, why
        self.trips += 1
        self.outcomes.clear()
        log.warning("breaker of %s open for %g s: %s", self.name, open_s, why or "its requests fail")

    def view(self):
        return {"state": self.state, "trips": self.trips, "open_s": self.open_s, "reason": self.reason}


class Breakers:
    def __init__(self, config):
        self.configure(config)
        self.nodes = {}

    def configure(self, config):
        self.cfg = config.circuit_breaker
        self.enabled = self.cfg.enabled

    def of(self, node):
        breaker = self.nodes.get(node.name)
        if breaker is None:
            breaker = self.nodes[node.name] = Breaker(self.cfg, node.name)
        return breaker

    def allows(self, node):
        return not self.enabled or self.of(node).allows(time.monotonic())

    def check(self, node):
        """Raise BreakerOpen (57P03) while node's breaker keeps traffic away."""
        if self.enabled and not self.of(node).allows(time.monotonic()):
            breaker = self.of(node)
            left = max(0.0, breaker.opened + breaker.open_s - time.monotonic())
            raise BreakerOpen(f"the circuit breaker of node {node.name} is open: {breaker.reason or 'its requests fail'}",
                              hint=f"It lets transactions through again in {left:.1f} s.")

    def refused(self, node, exc):
        """A connection the proxy opened to node failed (pool/pool.py, wherever it opens one): a
        failure when node is up but refusing (pg_hba.conf, its connection limit); one that cannot
        reach it at all is the health checker's business."""
        if self.enabled and not node_unreachable(exc):
            self.of(node).refused(time.monotonic(), getattr(exc, "message", None) or str(exc))

    def opened(self, node):
        """A connection to node logged in."""
        if self.enabled:
            self.of(node).refusals = 0

    def success(self, node):
        if self.enabled:
            self.of(node).record(True, time.monotonic())

    def failure(self, node, why):
        if self.enabled:
            self.of(node).record(False, time.monotonic(), why)

    def view(self, node):
        return self.of(node).view() if self.enabled else None
