"""Following Patroni through its DCS (`[topology] provider = "patroni"` with `dcs_url =
"etcd3://HOST:PORT[,HOST:PORT...]"`): the proxy reads and then *watches* the keys Patroni keeps in
etcd under `{namespace}/{scope}/` (leader, members/NAME, sync, failover), so a new leader reaches
every proxy as soon as etcd has it, with no polling interval. etcd's v3 JSON gateway (`/v3/kv/range`,
a streaming `/v3/watch`) is all it needs: no client library.

The leader key names the member that holds the leader lock; that member (by node name, else by the
host and port of its `conn_url`) becomes the primary, PENDING (writes wait) until a probe finds it
out of recovery (Patroni takes the lock before it promotes: confirm.py). The key
deleted (its TTL ran out, or the leader hands over) clears the primary: writes wait in the
switchover buffer until a new leader answers. A leader whose PostgreSQL went down and came back
(Patroni restarts it in place) is probed again; one that is shutting down is never taken back on a
mere refresh of its key. Patroni's `failover` key (a `patronictl switchover` or `failover`, once due)
holds new transactions from the moment it appears to the moment it is gone, so that nothing starts
on the old leader while it hands over; transactions it cuts are replayed on the new one (replay.py).
Members tagged `noloadbalance` take no reads. While etcd cannot be reached the proxy keeps the
primary it knows and tries the endpoints again; the proxy's own health probes still decide which
standbys take reads.
"""
import logging
import time
from urllib.parse import urlparse

import gevent

from .confirm import LeaderConfirmation
from .etcd import Etcd, Follower, Mirror
from .events import HealthChanged
from .tracker import CONFIRMED, NONE, STANDBY

log = logging.getLogger(__name__)
RETRY_S = 0.5
NOLOADBALANCE = "Patroni tag noloadbalance"


def _parse_time(text):
    from datetime import datetime
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


class PatroniDcsProvider(Follower):
    """Watches Patroni's keys in etcd; tells the tracker who the leader is."""

    confirms_primary = True  # (providers.py: the configured primary waits for Patroni at start)

    def __init__(self, config, tracker, health=None, buffer=None):
        self.config, self.tracker, self.health, self.buffer = config, tracker, health, buffer
        self.leader = None      # the leader the key named last
        self.confirmation = LeaderConfirmation(tracker, health)
        self.holding = None     # why new transactions wait (Patroni's failover key)
        topology = config.topology
        self.prefix = f"{topology.namespace.rstrip('/')}/{topology.scope}/"
        self.etcd = Etcd(topology.dcs_url, "topology.dcs_url")
        self.mirror = Mirror(self.etcd, self.prefix)  # Patroni's keys (without the prefix), as watched
        self.greenlet = None
        self.error = None
        self.changes = 0        # leader changes applied (for /topology)

    def start(self):
        self.tracker.subscribe(self.on_event)
        self.greenlet = gevent.spawn(self._run)

    def stop(self):
        self.confirmation.stop()
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
        self.mirror.follow(self._changed)

    def _changed(self, first):
        if first and self.error is not None:
            log.warning("patroni dcs: etcd reachable again")
        self.error = None
        self.apply()

    # --- what the keys mean -------------------------------------------------------------------
    def member(self, name):
        return self.mirror.json(f"members/{name}") or {}

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
        self._tags(leader_name)
        self._planned()
        if not leader_name:
            self.leader = None
            if tracker.primary is not None and tracker.state != NONE:
                tracker.clear_primary("Patroni's leader key is gone (its lock expired or it is handing over)")
            return
        node = self.node_for(leader_name)
        if node is None:
            log.error("patroni dcs: the leader %r is none of the configured nodes", leader_name)
            return
        if node.name != self.leader:  # a new leader: writes wait until it answers as primary
            self.leader = node.name
            self.changes += 1
            log.warning("patroni dcs: leader %s (revision %d)", node.name, self.revision)
            if tracker.primary != node.name or tracker.state != CONFIRMED:
                self.confirmation.begin(node, f"Patroni leader (etcd revision {self.revision})")

    def on_event(self, event):
        """The leader's PostgreSQL is back (restarted in place by Patroni): it is the primary again."""
        tracker = self.tracker
        if (isinstance(event, HealthChanged) and event.healthy and event.node == self.leader
                and tracker.state == NONE):
            self.confirmation.begin(tracker.node(event.node), "Patroni's leader is back")

    def _tags(self, leader_name):
        """Members tagged noloadbalance take no reads (fenced while the tag holds, unless leader)."""
        tracker = self.tracker
        for key in self.keys:
            if not key.startswith("members/"):
                continue
            name = key[len("members/"):]
            node, member = self.node_for(name), self.member(name)
            if node is None:
                continue
            if name != leader_name and member.get("state") in ("running", "streaming"):
                tracker.roles[node.name] = STANDBY
            tagged = bool((member.get("tags") or {}).get("noloadbalance")) and name != leader_name
            if tagged and node.name not in tracker.fenced:
                tracker.fence(node.name, NOLOADBALANCE)
            elif not tagged and tracker.fenced.get(node.name) == NOLOADBALANCE:
                tracker.enable(node.name)

    def _planned(self):
        """Patroni's failover key (patronictl switchover/failover): new transactions wait in the
        switchover buffer from the moment it appears (due) until it is gone or emptied."""
        buffer, planned = self.buffer, self.mirror.json("failover") or {}
        due = bool(planned.get("leader") or planned.get("member")) and not (  # (Patroni empties it when done)
            planned.get("scheduled_at") and _parse_time(planned["scheduled_at"]) > time.time())
        if buffer is None:
            return
        if due and self.holding is None and not buffer.paused:
            self.holding = f"Patroni {'switchover' if planned.get('leader') else 'failover'} to " \
                           f"{planned.get('member') or 'a new leader'}"
            buffer.pause(self.holding)
            log.warning("patroni dcs: %s: new transactions wait", self.holding)
        elif not due and self.holding is not None:
            self.holding = None
            if buffer.paused:
                buffer.resume()

    def view(self):
        return {"dcs": self.config.topology.dcs_url, "prefix": self.prefix, "revision": self.revision,
                "leader": self.keys.get("leader"), "error": self.error, "changes": self.changes,
                "at": time.time()}
