"""A leader named by an outside decider (Patroni) is PENDING until a probe finds it out of recovery:
Patroni takes the leader lock, and reports the member as leader, before its PostgreSQL is promoted,
and writes sent meanwhile would fail with 25006. Probed every PROBE_S until then, for at most
CONFIRM_S (the regular probes go on after)."""
import time

import gevent

from .tracker import PENDING

PROBE_S = 0.05
CONFIRM_S = 60.0


class LeaderConfirmation:
    def __init__(self, tracker, health):
        self.tracker, self.health = tracker, health
        self.greenlet = None  # the one probing the leader named last

    def begin(self, node, why):
        """node is the primary now, PENDING until it answers as one (at once without probes)."""
        self.tracker.set_primary(node.name, why)
        if self.health is None:
            self.tracker.confirm_primary(why)
            return
        self.stop()
        self.greenlet = gevent.spawn(self._probe, node)

    def probing(self, node):
        return self.greenlet is not None and not self.greenlet.dead and self.tracker.primary == node.name

    def stop(self):
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
            self.greenlet = None

    def _probe(self, node):
        tracker, deadline = self.tracker, time.monotonic() + CONFIRM_S
        while tracker.primary == node.name and tracker.state == PENDING and time.monotonic() < deadline:
            self.health.probe(node)
            if tracker.state == PENDING:
                gevent.sleep(PROBE_S)
