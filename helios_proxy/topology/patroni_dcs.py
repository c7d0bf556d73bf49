"""Following Patroni through its DCS (`[topology] provider = "patroni"` with `dcs_url =
"etcd3://HOST:PORT[,HOST:PORT...]"`): the proxy reads and then *watches* the keys Patroni keeps in
etcd under `{namespace}/{scope}/` (leader, members/NAME, sync, failover), so a new leader reaches
every proxy as soon as etcd has it, with no polling interval. etcd's v3 JSON gateway (`/v3/kv/range`,
a streaming `/v3/watch`) is all it needs: no client library.

The leader key names the member that holds the leader lock; that member (by node name, else by the
host and port of its `conn_url`) becomes the confirmed primary. The key deleted (its TTL ran out: the
leader was lost) clears the primary: writes wait in the switchover buffer until a new leader key
appears. While etcd cannot be reached the proxy keeps the primary it knows and tries the endpoints
again; the proxy's own health probes still decide which standbys take reads.
"""
import json
import logging
import time
from urllib.parse import urlparse

import gevent

from .etcd import Etcd
from .tracker import CONFIRMED, STANDBY

log = logging.getLogger(__name__)
RETRY_S = 0.5


class PatroniDcsProvider:
    """Watches Patroni's keys in etcd; tells the tracker who the leader is."""

    def __init__(self, config, tracker):
        self.config, self.tracker = config, tracker
        topology = config.topology
        self.prefix = f"{topology.namespace.rstrip('/')}/{topology.scope}/"
        self.etcd = Etcd(topology.dcs_url, "topology.dcs_url")
        self.keys = {}          # key (without the prefix) -> value
        self.revision = 0
        self.greenlet = None
        self.error = None
        self.changes = 0        # leader changes applied (for /topology)

    def start(self):
        self.greenlet = gevent.spawn(self._run)

    def stop(self):
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
            self.greenlet = None

    # --- etcd ---------------------------------------------------------------------------------
    def _run(self):
        while True:
            try:
                self._follow()
            except OSError as e:
                if self.error is None:
                    log.error("patroni dcs: etcd unreachable (%s); the primary stays as it was", e)
                self.error = str(e)
            gevent.sleep(RETRY_S)

    def _follow(self):
        """Read every key once, then apply each change etcd streams (until the stream ends)."""
        keys, self.revision = self.etcd.range(self.prefix, prefix=True)
        self.keys = {key[len(self.prefix):]: value for key, value in keys.items()}
        if self.error is not None:
            log.warning("patroni dcs: etcd reachable again")
        self.error = None
        self.apply()
        changed = False
        for change in self.etcd.watch(self.prefix, self.revision + 1):
            if change is None:  # the end of one batch of changes
                if changed:
                    self.apply()
                changed = False
                continue
            kind, key, value, revision = change
            if kind == "DELETE":
                self.keys.pop(key[len(self.prefix):], None)
            else:
                self.keys[key[len(self.prefix):]] = value
            self.revision, changed = max(self.revision, revision), True

    # --- what the keys mean -------------------------------------------------------------------
    def member(self, name):
        try:
            return json.loads(self.keys.get(f"members/{name}", "") or "{}")
        except ValueError:
            return {}

    def node_for(self, name):
        for node in self.config.nodes:
            if node.name == name:
                return node
        url = urlparse(self.member(name).get("conn_url", ""))
        for node in self.config.nodes:
            if url.hostname == node.host and (url.port or 5432) == node.port:
                return node
        return None

    def apply(self):
        tracker = self.tracker
        leader_name = self.keys.get("leader")
        for key in self.keys:
            if key.startswith("members/") and key[len("members/"):] != leader_name:
                node = self.node_for(key[len("members/"):])
                if node is not None and self.member(key[len("members/"):]).get("state") in ("running", "streaming"):
                    tracker.roles[node.name] = STANDBY
        if not leader_name:
            if tracker.primary is not None:
                tracker.clear_primary("Patroni's leader key is gone (its lock expired)")
            return
        node = self.node_for(leader_name)
        if node is None:
            log.error("patroni dcs: the leader %r is none of the configured nodes", leader_name)
            return
        if tracker.primary != node.name or tracker.state != CONFIRMED:
            self.changes += 1
            log.warning("patroni dcs: leader %s (revision %d)", node.name, self.revision)
            tracker.take_over(node.name, f"Patroni leader (etcd revision {self.revision})")

    def view(self):
        return {"dcs": self.config.topology.dcs_url, "prefix": self.prefix, "revision": self.revision,
                "leader": self.keys.get("leader"), "error": self.error, "changes": self.changes,
                "at": time.time()}
