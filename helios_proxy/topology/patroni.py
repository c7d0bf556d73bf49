"""The Patroni topology provider: for users who already run Patroni, Patroni decides who the
primary is and the proxy follows. Its REST API's `GET /cluster` is polled every `health.interval`
(`patroni_url` may name several members, comma-separated: the first that answers is asked):
the running member with role "leader" (or "master") becomes the primary, PENDING (writes wait)
until a probe finds it out of recovery (Patroni reports the lock's holder as leader before it is
promoted: confirm.py); no leader clears the primary (writes wait in the switchover buffer).
Members map to nodes by name, else by host and port. The proxy's own health probes still decide
which standbys take reads.
"""
import json
import logging
import urllib.request

from ..periodic import Periodic
from .confirm import LeaderConfirmation
from .tracker import CONFIRMED, STANDBY

log = logging.getLogger(__name__)
LEADER_ROLES = ("leader", "master")


class PatroniProvider(Periodic):
    confirms_primary = True  # (providers.py: the configured primary waits for Patroni at start)

    def __init__(self, config, tracker, health=None):
        self.config = config
        self.tracker = tracker
        self.confirmation = LeaderConfirmation(tracker, health)
        self.error = None
        self.good = None  # the member URL that answered last

    def interval(self):
        return self.config.health.interval

    def stop(self):
        super().stop()
        self.confirmation.stop()

    def urls(self):
        """topology.patroni_url: one member's REST API, or several (comma-separated): any that answers."""
        return [u.strip().rstrip("/") for u in self.config.topology.patroni_url.split(",") if u.strip()]

    def fetch(self):
        """The cluster as the first member that answers sees it (the last one that did, first)."""
        urls = self.urls()
        if self.good in urls:
            urls.remove(self.good)
            urls.insert(0, self.good)
        failure = None
        for url in urls:
            try:
                with urllib.request.urlopen(url + "/cluster", timeout=self.config.health.timeout) as response:
                    cluster = json.load(response)
                self.good = url
                return cluster
            except (OSError, ValueError) as e:
                failure = e
        raise failure or OSError("topology.patroni_url names no URL")

    def _node_for(self, member):
        for node in self.config.nodes:
            if node.name == member.get("name"):
                return node
        for node in self.config.nodes:
            if node.host == member.get("host") and node.port == int(member.get("port") or 0):
                return node
        return None

    def tick(self):
        try:
            cluster = self.fetch()
        except (OSError, ValueError) as e:
            if self.error is None:
                log.error("Patroni API %s unreachable: %s (the primary stays as it was)",
                          self.config.topology.patroni_url, e)
            self.error = str(e)
            return
        self.error = None
        tracker, leader = self.tracker, None
        for member in cluster.get("members", []):
            node = self._node_for(member)
            if node is None:
                continue
            running = member.get("state") in ("running", "streaming")
            if member.get("role") in LEADER_ROLES and running:
                leader = node
            elif running:
                tracker.roles[node.name] = STANDBY
        if leader is None:
            tracker.clear_primary("Patroni reports no running leader")
        elif tracker.primary != leader.name or (tracker.state != CONFIRMED
                                                 and not self.confirmation.probing(leader)):
            self.confirmation.begin(leader, "Patroni leader")
