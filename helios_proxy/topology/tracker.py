"""The primary tracker: which node takes writes now, learned from a topology provider.

    set_primary(node)        confirm_primary()          clear_primary()
    ----------------> PENDING ----------------> CONFIRMED ------------> NONE
                         |   (node lost / demoted)   |
                         +---------------------------+--> NONE

Writes go to the primary only while it is CONFIRMED; otherwise they wait in the switchover buffer
(switchover_buffer.py). Every transition is broadcast to the subscribers as a TopologyEvent (events.py).

The configured primary starts CONFIRMED where the configuration is the authority (`standalone`, a
package's provider). Where a provider decides (`postgres`: the probes; `patroni`: Patroni), the
configured primary is only the configuration's guess: it starts PENDING (writes wait) until the
provider confirms it or names another (a proxy started after a failover, with the old
configuration, would otherwise send writes to a standby: 25006); the proxy gives the provider its
first say before it serves the first client (Proxy._first_say).
With the PostgreSQL provider, probe observations move the primary on their own: a PENDING primary
is confirmed once it answers as not in recovery; a confirmed primary found in recovery is cleared;
a node promoted by someone else is followed. Split-brain guard: when a second node claims to be
primary, the one with the newer timeline (then the higher WAL position) keeps or takes the role and
the other gets no traffic ("stale") until it is a standby again; on an exact tie the primary is
cleared and writes wait for the operator (`helios-proxy primary set NODE` or the admin API).
Fencing (planned switchover, the operator) is sticky: a fenced node gets no traffic until enabled.
"""
import logging
import time

from .events import HealthChanged, NodeLeft, PrimaryChanged

log = logging.getLogger(__name__)
PENDING, CONFIRMED, NONE = "PENDING", "CONFIRMED", "NONE"
PRIMARY, STANDBY = "primary", "standby"


class Observation:
    """What one probe saw on a node."""
    __slots__ = ("in_recovery", "timeline", "lsn", "at")

    def __init__(self, in_recovery, timeline=None, lsn=None):
        self.in_recovery = in_recovery
        self.timeline = timeline
        self.lsn = lsn
        self.at = time.monotonic()

    def rank(self):
        return (self.timeline or 0, self.lsn or 0)


class PrimaryTracker:
    def __init__(self, config, follow=True):
        self.config = config
        self.by_name = {n.name: n for n in config.nodes}
        self.follow = follow       # let probe observations move the primary (PostgreSQL provider)
        self.primary = next(n.name for n in config.nodes if n.role == PRIMARY)
        self.state = CONFIRMED
        self.guess = False         # the configured primary, until a provider confirms it (expect_confirmation)
        self.baseline = None       # that node, until the first confirmation: confirming it is no change
        self.roles = {n.name: n.role for n in config.nodes}
        self.seen = {}             # node name -> latest Observation
        self.stale = set()         # claimed primary while another node held the role
        self.fenced = {}           # node name -> reason (sticky until enable())
        self.busy = False          # a failover or switchover is choosing the next primary
        self.reason = None         # why there is no confirmed primary (for clients' error messages)
        self.subscribers = []
        self.changes = 0           # primary changes since start (metrics)
        self.confirmed = None      # the primary node while CONFIRMED, else None: current(), kept by _settled()
        self._settled()

    CONFIG_FENCE = "disabled in the configuration"

    def apply_config(self, config):
        """Take a (re)loaded configuration: nodes with enabled = false are fenced, others un-fenced
        when the configuration had fenced them."""
        self.config = config
        self.by_name = {n.name: n for n in config.nodes}
        self._settled()
        for n in config.nodes:
            self.roles.setdefault(n.name, n.role)
            if not n.enabled and n.name not in self.fenced:
                self.fence(n.name, self.CONFIG_FENCE)
            elif n.enabled and self.fenced.get(n.name) == self.CONFIG_FENCE:
                self.enable(n.name)

    # --- subscribers --------------------------------------------------------------------------
    def subscribe(self, callback):
        self.subscribers.append(callback)

    def publish(self, event):
        for callback in list(self.subscribers):
            try:
                callback(event)
            except Exception:  # one subscriber's bug must not hide the event from the others
                log.exception("topology subscriber %r failed on %r", callback, event)

    # --- queries -------------------------------------------------------------------------------
    def node(self, name):
        return self.by_name.get(name)

    def current(self):
        """The primary node while it is CONFIRMED, else None."""
        return self.confirmed

    def _settled(self):
        """After every change of state, primary or by_name (this class's methods only): `confirmed`,
        a field read for every transaction (switchover_buffer.ready, the fast path's take)."""
        self.confirmed = self.by_name.get(self.primary) if self.state == CONFIRMED else None

    def usable(self, name):
        return name not in self.fenced and name not in self.stale

    def standbys(self):
        """Nodes that are standbys (as last seen, else as configured) and may take reads."""
        return [n for n in self.config.nodes if self.roles.get(n.name, n.role) == STANDBY and self.usable(n.name)]

    def claimants(self):
        """Nodes last seen as not in recovery, best (newest timeline, highest LSN) first."""
        found = [(o.rank(), name) for name, o in self.seen.items() if not o.in_recovery]
        return [name for _, name in sorted(found, reverse=True)]

    # --- the lifecycle ---------------------------------------------------------------------------
    def expect_confirmation(self, who):
        """At start, when a provider decides which node is the primary: the configured one is PENDING
        (no event: nothing was confirmed before) until who confirms it, or names or finds another."""
        self.state, self.guess, self.baseline = PENDING, True, self.primary
        self._settled()
        self.reason = f"{self.primary}: the configuration's primary, not yet confirmed by {who}"
        log.info("primary: %s PENDING until %s confirms it", self.primary, who)

    def set_primary(self, name, why):
        if self.node(name) is None:
            raise KeyError(name)
        old = self.primary if self.state != NONE else None
        self.primary, self.state, self.guess = name, PENDING, False
        self._settled()
        self.stale.discard(name)
        log.warning("primary: %s PENDING (%s)", name, why)
        self.publish(PrimaryChanged(old, name, PENDING))

    def confirm_primary(self, why="confirmed"):
        if self.state == CONFIRMED or self.primary is None:
            return
        self.state, self.guess = CONFIRMED, False
        self._settled()
        if self.primary != self.baseline:  # (the configured primary confirmed at start: what was trusted)
            self.changes += 1
        self.baseline = None
        self.roles[self.primary] = PRIMARY
        log.warning("primary: %s CONFIRMED (%s)", self.primary, why)
        self.publish(PrimaryChanged(None, self.primary, CONFIRMED))

    def clear_primary(self, why):
        if self.state == NONE:
            return
        self.state, self.guess = NONE, False
        self._settled()
        self.reason = f"{self.primary}: {why}"
        log.warning("primary: NONE (%s was primary: %s)", self.primary, why)
        self.publish(PrimaryChanged(self.primary, None, NONE))

    def fence(self, name, reason):
        """No traffic to name until enable(name)."""
        self.fenced[name] = reason
        log.warning("node %s fenced: %s", name, reason)
        if name == self.primary:
            self.clear_primary(f"fenced: {reason}")
        self.publish(NodeLeft(name, reason))

    def enable(self, name):
        if self.fenced.pop(name, None) is not None:
            log.warning("node %s enabled again", name)

    # --- what the provider reports -------------------------------------------------------------
    def health_changed(self, name, healthy, reason=None):
        self.publish(HealthChanged(name, healthy))
        if not healthy and name == self.primary:
            self.clear_primary(f"unhealthy: {reason}" if reason else "unhealthy")

    def observe(self, name, in_recovery, timeline=None, lsn=None):
        """A probe's answer from node name."""
        seen = self.seen[name] = Observation(in_recovery, timeline, lsn)
        self.roles[name] = STANDBY if in_recovery else PRIMARY
        if in_recovery:
            if name in self.stale:
                self.stale.discard(name)
                log.warning("node %s is a standby now; it takes reads again", name)
            if name == self.primary and (self.state == CONFIRMED or self.guess) and self.follow:
                self.clear_primary("it is in recovery (a standby now: the configuration is out of date?)"
                                   if self.guess else "it is in recovery now (demoted outside the proxy?)")
            return
        if name in self.fenced or name in self.stale:
            return
        if name == self.primary:
            if self.state == PENDING:
                self.confirm_primary("answers as primary")
            elif self.state == NONE and self.follow and not self.busy and not self._newer_than(seen, name):
                self.take_over(name, "the primary is back")
            return
        if not self.follow:
            return
        current = self.seen.get(self.primary) if self.state != NONE else None
        if self.state != NONE and current is None:
            return  # the primary has not been probed yet: compare at the next round
        if self.state == NONE or current.in_recovery:
            if not self.busy and not self._newer_than(seen, name):
                self.take_over(name, "promoted outside the proxy")
            return
        if seen.rank() > current.rank():
            self._make_stale(self.primary, f"{name} claims primary on a newer timeline/WAL position")
            self.take_over(name, "promoted outside the proxy (newer timeline)")
        elif seen.rank() < current.rank():
            self._make_stale(name, f"claims primary too, behind {self.primary}")
        else:
            log.error("split brain: %s and %s both claim to be primary at the same timeline and "
                      "position; writes wait until the operator sets the primary", name, self.primary)
            self._make_stale(name, "split brain")
            self._make_stale(self.primary, "split brain")
            self.clear_primary("split brain")

    def _newer_than(self, seen, name):
        """Whether another usable node claims primary with a newer timeline/position than seen."""
        return any(o.rank() > seen.rank() for n, o in self.seen.items()
                   if n != name and not o.in_recovery and self.usable(n))

    def take_over(self, name, why):
        """set_primary and confirm_primary at once: for a node known to answer as primary."""
        self.set_primary(name, why)
        self.confirm_primary(why)

    def _make_stale(self, name, why):
        if name not in self.stale:
            self.stale.add(name)
            log.error("node %s gets no traffic: %s", name, why)
            if name == self.primary:
                self.clear_primary(why)
            self.publish(NodeLeft(name, why))
