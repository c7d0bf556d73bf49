"""The rate limiter: `[[limits]]`, each a token bucket, a sliding window or a concurrency guard per
key (user, database, client address, tenant or query fingerprint). Every execution (each statement
of a Query, each Execute: limits/admission.py) must pass every limit whose key matches; one that would exceed a limit is refused with SQLSTATE 53400 naming it, or
(`on_exceed = "wait"`) waits up to `max_wait_ms` for room. Checked by the rate-limit stage
(pipeline/stages/rate_limit.py) for a Query and by the forwarder for an Execute (admission.py); a concurrency slot is given
back at the ReadyForQuery that ends the query (frontend/relay.py).

With `[server] workers = N`, the workers keep every limit's state in one shared table
(limits/shared.py): a client's connections land on any worker, and a limit holds for their sum.
"""
import collections
import time
from fnmatch import fnmatchcase
from functools import lru_cache

from gevent.event import Event
from pglast.parser import ParseError, fingerprint

from ..waits import wait_cancelable

KEYS_KEPT = 10000  # per limit: state of this many keys at most (the least recently seen go first)


@lru_cache(maxsize=10000)
def shape_of(sql):
    """The query fingerprint a `key = "fingerprint"` limit counts under (pglast's)."""
    if sql is None:
        return "unknown"
    try:
        return fingerprint(sql)
    except ParseError:
        return "unparsable"


class Exceeded(Exception):
    def __init__(self, limit, key):
        super().__init__(f'rate limit "{limit.name}" exceeded for {limit.key} "{key}"')


class Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, burst):
        self.tokens, self.at = float(burst), time.monotonic()


class Guard:
    """A concurrency guard's state for one key: queries running, and those waiting in line. A
    query that ends hands its slot straight to the first in line (no newcomer jumps the queue)."""
    __slots__ = ("running", "waiters")

    def __init__(self):
        self.running, self.waiters = 0, collections.deque()

    def wait(self, timeout, waiting=None):
        """Wait in line for a slot; True when one was handed over (waiting: waits.wait_cancelable's;
        a cancel's error is raised)."""
        handed, got = Event(), False
        self.waiters.append(handed)
        try:
            wait_cancelable(waiting, (handed,), timeout)
            got = handed.is_set()
        finally:
            if not got:  # timed out, canceled, or the client went away while waiting
                if handed.is_set():
                    self.release()  # (handed over just then: on to the next in line)
                else:
                    self.waiters.remove(handed)
        return got

    def release(self):
        if self.waiters:
            self.waiters.popleft().set()  # (the slot stays counted in running: it changes hands)
        elif self.running > 0:
            self.running -= 1


class Limit:
    """One [[limits]] entry and its state per key."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.name, self.kind, self.key, self.match = cfg.name, cfg.kind, cfg.key, cfg.match
        self.state = collections.OrderedDict()  # key -> Bucket | deque of times | Guard
        self.passed = self.rejected = self.waited = 0

    def applies(self, value):
        match = self.match
        return not match or fnmatchcase(value, match)

    def _state(self, value, make):
        state = self.state.get(value)
        if state is None:
            state = self.state[value] = make()
            if len(self.state) > KEYS_KEPT:
                self.state.popitem(last=False)
        else:
            self.state.move_to_end(value)
        return state

    def wait_s(self, value, now, n=1):
        """0 if n executions of key value may run now (and they are counted, all or none), else
        seconds until they may."""
        cfg = self.cfg
        if self.kind == "token_bucket":
            b = self._state(value, lambda: Bucket(cfg.burst))
            b.tokens = min(cfg.burst, b.tokens + (now - b.at) * cfg.rate)
            b.at = now
            n = min(n, cfg.burst)  # (more than the burst at once: a full bucket lets them pass)
            if b.tokens >= n:
                b.tokens -= n
                return 0
            return (n - b.tokens) / cfg.rate
        if self.kind == "sliding_window":
            times = self._state(value, collections.deque)
            while times and times[0] <= now - cfg.window_s:
                times.popleft()
            n = min(n, cfg.max_queries)
            if len(times) + n <= cfg.max_queries:
                times.extend([now] * n)
                return 0
            return times[n - 1] + cfg.window_s - now
        guard = self._state(value, Guard)
        if guard.running < cfg.max and not guard.waiters:
            guard.running += 1
            return 0
        return None  # until a running query hands its slot on

    def release(self, value):
        guard = self.state.get(value)
        if guard is not None:
            guard.release()

    def take(self, value, n=1, waiting=None):
        """Count n executions of key value against this limit, waiting if configured; raises Exceeded
        (or, waiting, a cancel's error: waits.wait_cancelable)."""
        now = time.monotonic()
        if self.wait_s(value, now, n) == 0:  # the usual case: room now
            self.passed += 1
            return
        cfg = self.cfg
        deadline = now + cfg.max_wait_ms / 1000
        waited = False
        while True:
            now = time.monotonic()
            wait = self.wait_s(value, now, n)
            if wait == 0:
                self.passed += 1
                self.waited += waited
                return
            if cfg.on_exceed != "wait" or now >= deadline:
                self.rejected += 1
                raise Exceeded(self, value)
            waited = True
            if wait is None:  # a concurrency guard: in line, first come first served
                if self.state[value].wait(deadline - now, waiting):
                    self.passed += 1
                    self.waited += 1
                    return
                now = deadline
            else:
                wait_cancelable(waiting, (), min(wait, deadline - now))

    def levels(self, top=20):
        """The current level of the busiest keys, for /limits."""
        cfg, now, out = self.cfg, time.monotonic(), {}
        for value, state in list(self.state.items())[-top:]:
            if self.kind == "token_bucket":
                out[value] = round(min(cfg.burst, state.tokens + (now - state.at) * cfg.rate), 2)
            elif self.kind == "sliding_window":
                out[value] = sum(1 for t in state if t > now - cfg.window_s)
            else:
                out[value] = state.running
        return out


def release(session):
    """The session is owed nothing more: its concurrency slots go back."""
    held, session.limits_held = session.limits_held, []
    for limit, value in held:
        limit.release(value)


class Limiter:
    def __init__(self, config, table=None):
        """table: the workers' SharedTable (limits/shared.py) when there are several workers."""
        if table is None:
            self.limits = [Limit(cfg) for cfg in config.limits]
        else:
            from .shared import SharedLimit
            self.limits = [SharedLimit(cfg, table) for cfg in config.limits]
        self.fleet = None
        if config.fleet.redis_url:
            from .fleet import SHARED, Fleet, FleetConcurrency, FleetLimit  # held for the fleet, on Redis
            if any(cfg.kind in SHARED for cfg in config.limits):
                self.fleet = Fleet(config)
                self.limits = [(FleetConcurrency if limit.kind == "concurrency" else FleetLimit)(limit.cfg, self.fleet)
                               for limit in self.limits]
        self.table = table
        self.concurrency = any(limit.kind == "concurrency" for limit in self.limits)
        self.by_text = any(limit.key == "fingerprint" for limit in self.limits)  # (admission.Texts)

    @staticmethod
    def value(limit, session, sql):
        key = limit.key
        if key == "user":
            return session.identity.user
        if key == "database":
            return session.identity.database
        if key == "client_address":
            return "unix socket" if session.identity.local else session.identity.peer[0]
        if key == "tenant":
            return session.identity.tenant.name if session.identity.tenant is not None else None
        return shape_of(sql)

    def take(self, session, sql, count=1, holding=(), waiting=None):
        """Count count executions of sql (None: unknown) against every limit that applies; raises
        Exceeded, or a cancel's error while waiting (after giving back the concurrency slots it
        took). Returns the concurrency slots held, to release later (None: none). holding: the slots
        the session holds already (its batch runs one thing at a time: one slot). waiting: the
        session's LeaseSlot.wait_on (a cancel reaches a wait)."""
        held = None
        try:
            for limit in self.limits:
                value = self.value(limit, session, sql)
                if value is not None and limit.applies(value):
                    if limit.kind == "concurrency":
                        if (limit, value) not in holding:
                            limit.take(value, 1, waiting)
                            if held is None:
                                held = []
                            held.append((limit, value))
                        continue
                    limit.take(value, count, waiting)
        except BaseException:
            for limit, value in held or ():
                limit.release(value)
            raise
        return held

    def state(self):
        fleet = self.fleet
        return [{"name": limit.name, "kind": limit.kind, "key": limit.key, "passed": limit.passed,
                 "rejected": limit.rejected, "waited": limit.waited, "levels": limit.levels(),
                 "shared": "fleet" if hasattr(limit, "fleet") else self.table is not None,
                 **({"redis_round_trips": fleet.round_trips, "redis_failures": fleet.failures,
                     "redis_down": fleet.down} if hasattr(limit, "fleet") else {})}
                for limit in self.limits]
