"""Fleet membership on Redis (`[fleet] name` and `redis_url`, no `dcs_url`): each proxy registers itself in Redis under a
key with a short TTL, refreshed every second (its listen and admin addresses, its process, and the
primary it sees), so that `GET /fleet` on any member lists the live members and whether they agree
on the primary. A member that stops refreshing (gone, cut off) drops out after MEMBER_TTL_S.

Membership only: with `[fleet] dcs_url` the fleet registers in etcd instead, where it also decides
failovers and routes cancel requests (fleet_dcs.py).
"""
import json
import logging
import os
import time

from ..periodic import Periodic
from .fleet_dcs import agree_on_primary, member_name

log = logging.getLogger(__name__)
MEMBER_TTL_S = 3


class FleetMembership(Periodic):
    def __init__(self, proxy):
        import redis  # the [redis] extra
        self.proxy = proxy
        cfg = proxy.config.fleet
        self.redis = redis
        self.client = redis.Redis.from_url(cfg.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.member = member_name(proxy.config, proxy.worker)
        self.prefix = f"helios:fleet:{cfg.cluster}:member:"
        self.error = None

    def interval(self):
        return 1.0

    def first_read(self, timeout):
        """Membership only: nothing the proxy must know before its first client."""
        return True

    def me(self):
        proxy = self.proxy
        primary = proxy.tracker.current()
        return {"name": self.member, "listen": proxy.config.server.listen, "admin": proxy.config.admin.listen,
                "pid": os.getpid(), "worker": proxy.worker[0], "primary": primary.name if primary else None,
                "primary_state": proxy.tracker.state, "clients": len(proxy.sessions), "seen": time.time()}

    def tick(self):
        try:
            self.client.set(self.prefix + self.member, json.dumps(self.me()), ex=MEMBER_TTL_S)
            if self.error is not None:
                log.warning("fleet: redis reachable again: registered as %s", self.member)
            self.error = None
        except (self.redis.RedisError, OSError) as e:
            if self.error is None:
                log.warning("fleet: redis unreachable (%s): not registered meanwhile", e)
            self.error = str(e)

    def overview(self):
        """{name, members: [...], agree: whether every live member names the same primary}."""
        members, error = [], self.error
        try:
            keys = sorted(self.client.scan_iter(match=self.prefix + "*", count=100))
            for value in self.client.mget(keys) if keys else []:
                if value:
                    members.append(json.loads(value))
        except (self.redis.RedisError, OSError, ValueError) as e:
            error = str(e)
        return {"cluster": self.proxy.config.fleet.cluster, "me": self.member, "dcs": "redis", "members": members,
                "agree_on_primary": agree_on_primary(members), "error": error}
