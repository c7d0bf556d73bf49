"""Token buckets and sliding windows held for a fleet of proxies (`[fleet] redis_url`): one bucket
(or window) per (limit, key) in Redis, from which each proxy leases `limit_chunk` executions at a
time (a Lua script: refill or roll, and take, atomically). Executions spend the leased tokens locally, so Redis
sees one round trip per chunk, not per query; the fleet as a whole never gets more than the
bucket gives (tokens a proxy leased and did not spend within LEASE_S are dropped, never returned:
the fleet may admit less than the rate, never more). While Redis cannot be reached a proxy keeps
to its own share (rate / fleet.members, a local bucket) or, `when_redis_down = "closed"`, refuses.

A sliding window is kept as two counters (this window's count, the last one's), the estimate
weighing the last by how much of it still overlaps, as limits/shared.py does between workers.

A concurrency guard is a hash in Redis of what each proxy holds (slots, and until when: a proxy
that dies gives its slots back after HOLD_TTL_S). A proxy leases a slot when its own are all in
use and keeps a slot its query gave back for HOLD_S, for its next query: a busy proxy makes no
round trip per query, an idle one returns its slots to the fleet.
"""
import logging
import os
import time

import gevent

from . import Bucket, Limit

log = logging.getLogger(__name__)
LEASE_S = 1.0  # leased tokens not spent by then are dropped
# KEYS[1]: the bucket; ARGV: rate, burst, now (s), wanted. Returns the tokens granted.
TAKE = """
local rate, burst, now, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = burst, now end
if now > at then tokens = math.min(burst, tokens + (now - at) * rate) end
local granted = math.min(wanted, math.floor(tokens))
if granted < 0 then granted = 0 end
redis.call('HSET', KEYS[1], 'tokens', tokens - granted, 'at', math.max(now, at))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return granted
"""
# KEYS[1]: the window; ARGV: window seconds, max, now (s), wanted. Returns the executions granted.
WINDOW = """
local w, most, now, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'start', 'count', 'last')
local start, count, last = tonumber(state[1]), tonumber(state[2]) or 0, tonumber(state[3]) or 0
if start == nil then start, count, last = now, 0, 0 end
if now - start >= w then
  local windows = math.floor((now - start) / w)
  if windows == 1 then last = count else last = 0 end
  start, count = start + windows * w, 0
end
local estimate = last * (1 - (now - start) / w) + count
local granted = math.min(wanted, math.floor(most - estimate))
if granted < 0 then granted = 0 end
redis.call('HSET', KEYS[1], 'start', start, 'count', count + granted, 'last', last)
redis.call('EXPIRE', KEYS[1], math.ceil(2 * w) + 60)
return granted
"""
# KEYS[1]: the guard; ARGV: member, most, now, ttl, wanted. Returns the slots granted to member.
CONCURRENCY = """
local member, most, now, ttl, wanted = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5])
local all = redis.call('HGETALL', KEYS[1])
local total, mine = 0, 0
for i = 1, #all, 2 do
  local sep = string.find(all[i + 1], ':')
  local count, expires = tonumber(string.sub(all[i + 1], 1, sep - 1)), tonumber(string.sub(all[i + 1], sep + 1))
  if expires < now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] == member then
    mine = count
  else
    total = total + count
  end
end
local granted = math.min(wanted, most - total - mine)
if granted < 0 then granted = 0 end
if wanted < 0 then mine, granted = -wanted - 1, 0 else mine = mine + granted end
if mine > 0 then
  redis.call('HSET', KEYS[1], member, mine .. ':' .. (now + ttl))
else
  redis.call('HDEL', KEYS[1], member)
end
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 60)
return granted
"""
SHARED = ("token_bucket", "sliding_window", "concurrency")  # the kinds the fleet holds on Redis
HOLD_S = 0.2        # a slot its query gave back stays this proxy's this long, for its next query
HOLD_TTL_S = 15.0   # a proxy's slots are the fleet's again this long after it last said it holds them
POLL_S = 0.01       # a query waiting for a slot asks again this often


class Fleet:
    """The Redis connection the fleet's limits share, and what went wrong with it (for /limits)."""

    def __init__(self, config):
        import redis  # the [redis] extra
        self.redis = redis
        self.cfg = config.fleet
        self.client = redis.Redis.from_url(self.cfg.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.scripts = {"token_bucket": self.client.register_script(TAKE),
                        "sliding_window": self.client.register_script(WINDOW),
                        "concurrency": self.client.register_script(CONCURRENCY)}
        self.member = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"  # (this proxy's holdings)
        self.down = False
        self.round_trips = self.failures = 0

    def take(self, kind, key, a, b, wanted):
        """Executions granted by the shared bucket (a, b: rate, burst) or window (a, b: seconds,
        most), or slots by the guard (a: most, b: unused; wanted < 0: hold -wanted - 1 slots), or
        None when Redis cannot be reached."""
        try:
            args = ([self.member, a, f"{time.time():.6f}", HOLD_TTL_S, wanted] if kind == "concurrency"
                    else [a, b, f"{time.time():.6f}", wanted])
            granted = int(self.scripts[kind](keys=[key], args=args))
        except (self.redis.RedisError, OSError) as e:
            self.failures += 1
            if not self.down:
                log.warning("fleet: redis unreachable (%s): shared limits keep this proxy's share (%s)", e,
                            self.cfg.when_redis_down)
            self.down = True
            return None
        if self.down:
            log.warning("fleet: redis reachable again: shared limits are the fleet's again")
            self.down = False
        self.round_trips += 1
        return granted


class FleetLimit(Limit):
    """A token bucket or sliding window [[limits]] entry the fleet shares (concurrency: per proxy)."""

    def __init__(self, cfg, fleet):
        super().__init__(cfg)
        self.fleet = fleet
        self.leases = {}  # key value -> [tokens leased and not spent, when leased]
        self.own = {}     # key value -> Bucket: this proxy's share while Redis is down

    def wait_s(self, value, now, n=1):
        cfg, fleet = self.cfg, self.fleet
        lease = self.leases.get(value)
        if lease is not None and (now - lease[1] > LEASE_S):
            lease = None
        if lease is None or lease[0] < n:
            chunk = max(n, fleet.cfg.limit_chunk)
            if self.kind == "token_bucket":
                granted = fleet.take(self.kind, f"helios:limit:{self.name}:{value}", cfg.rate, cfg.burst, chunk)
            else:
                granted = fleet.take(self.kind, f"helios:window:{self.name}:{value}", cfg.window_s,
                                     cfg.max_queries, min(chunk, cfg.max_queries))
            if granted is None:
                return self._redis_down(value, now, n)
            held = lease[0] if lease is not None else 0
            lease = [held + granted, now]
            if len(self.leases) > 10000:
                self.leases.clear()
            self.leases[value] = lease
        if lease[0] >= n:
            lease[0] -= n
            return 0
        rate = cfg.rate if self.kind == "token_bucket" else cfg.max_queries / cfg.window_s
        return max(0.001, (n - lease[0]) / rate)

    def _redis_down(self, value, now, n):
        cfg = self.cfg
        if self.fleet.cfg.when_redis_down == "closed":
            return 1.0  # (refused, or waited for, until Redis answers again)
        if self.kind == "sliding_window":  # this proxy's share of the window, held locally
            return self._own_window(value, now, n)
        share = cfg.rate / self.fleet.cfg.members
        b = self.own.get(value)
        if b is None:
            b = self.own[value] = Bucket(max(1, cfg.burst // self.fleet.cfg.members))
        b.tokens = min(cfg.burst / self.fleet.cfg.members, b.tokens + (now - b.at) * share)
        b.at = now
        if b.tokens >= n:
            b.tokens -= n
            return 0
        return (n - b.tokens) / share

    def _own_window(self, value, now, n):
        cfg, members = self.cfg, self.fleet.cfg.members
        times = self.own.get(value)
        if times is None:
            import collections
            times = self.own[value] = collections.deque()
        while times and times[0] <= now - cfg.window_s:
            times.popleft()
        most = max(1, cfg.max_queries // members)
        if len(times) + n <= most:
            times.extend([now] * n)
            return 0
        return max(0.001, times[0] + cfg.window_s - now)


class FleetGuard:
    """A fleet concurrency guard's state in this proxy for one key."""
    __slots__ = ("held", "running", "last", "keeper")

    def __init__(self):
        self.held = self.running = 0  # slots leased from the fleet, and in use by queries here
        self.last = 0.0               # when a query last gave one back
        self.keeper = None            # the greenlet that refreshes the lease and gives idle slots back


class FleetConcurrency(Limit):
    """A concurrency [[limits]] entry the fleet shares on Redis."""

    def __init__(self, cfg, fleet):
        super().__init__(cfg)
        self.fleet = fleet

    def wait_s(self, value, now, n=1):
        guard = self._state(value, FleetGuard)
        if guard.running < guard.held:  # (a slot this proxy leased and no query uses)
            guard.running += 1
            return 0
        granted = self.fleet.take("concurrency", f"helios:guard:{self.name}:{value}", self.cfg.max, 0, 1)
        if granted is None:  # Redis down: this proxy's share, or nothing
            share = max(1, self.cfg.max // self.fleet.cfg.members)
            if self.fleet.cfg.when_redis_down == "open" and guard.running < share:
                guard.running += 1
                return 0
            return POLL_S
        if granted:
            guard.held += granted
            guard.running += 1
            if guard.keeper is None:
                guard.keeper = gevent.spawn(self._keep, value, guard)
            return 0
        return POLL_S

    def release(self, value):
        """A query ended (maybe in a loop callback: nothing here waits; the keeper gives back)."""
        guard = self.state.get(value)
        if guard is not None and guard.running > 0:
            guard.running -= 1
            guard.last = time.monotonic()

    def _keep(self, value, guard):
        """While this proxy holds slots: keep its lease alive, give back slots idle for HOLD_S."""
        key, said = f"helios:guard:{self.name}:{value}", time.monotonic()
        try:
            while guard.held > 0:
                gevent.sleep(HOLD_S)
                now = time.monotonic()
                if guard.running < guard.held and now - guard.last >= HOLD_S:
                    keep = guard.running
                    if self.fleet.take("concurrency", key, self.cfg.max, 0, -keep - 1) is not None:
                        guard.held, said = keep, now
                elif now - said >= HOLD_TTL_S / 3:
                    if self.fleet.take("concurrency", key, self.cfg.max, 0, -guard.held - 1) is not None:
                        said = now
        finally:
            guard.keeper = None

    def levels(self, top=20):
        return {value: guard.running for value, guard in list(self.state.items())[-top:]}
