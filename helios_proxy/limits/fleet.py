"""Token buckets held for a fleet of proxies (`[fleet] redis_url`): one bucket per (limit, key) in
Redis, refilled at the limit's rate, from which each proxy leases `limit_chunk` tokens at a time
(a Lua script: refill and take atomically). Executions spend the leased tokens locally, so Redis
sees one round trip per chunk, not per query; the fleet as a whole never gets more than the
bucket gives (tokens a proxy leased and did not spend within LEASE_S are dropped, never returned:
the fleet may admit less than the rate, never more). While Redis cannot be reached a proxy keeps
to its own share (rate / fleet.members, a local bucket) or, `when_redis_down = "closed"`, refuses.

Only token buckets are shared; sliding windows and concurrency guards stay per proxy.
"""
import logging
import time

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


class Fleet:
    """The Redis connection the fleet's limits share, and what went wrong with it (for /limits)."""

    def __init__(self, config):
        import redis  # the [redis] extra
        self.redis = redis
        self.cfg = config.fleet
        self.client = redis.Redis.from_url(self.cfg.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.script = self.client.register_script(TAKE)
        self.down = False
        self.round_trips = self.failures = 0

    def take(self, key, rate, burst, wanted):
        """Tokens granted by the shared bucket, or None when Redis cannot be reached."""
        try:
            granted = int(self.script(keys=[key], args=[rate, burst, f"{time.time():.6f}", wanted]))
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
    """A token bucket [[limits]] entry the fleet shares (other kinds: Limit, per proxy)."""

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
            granted = fleet.take(f"helios:limit:{self.name}:{value}", cfg.rate, cfg.burst, chunk)
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
        return max(0.001, (n - lease[0]) / cfg.rate)

    def _redis_down(self, value, now, n):
        cfg = self.cfg
        if self.fleet.cfg.when_redis_down == "closed":
            return 1.0  # (refused, or waited for, until Redis answers again)
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
