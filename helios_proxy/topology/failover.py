"""The failover controller: when the primary is lost, pick the best standby and make it the primary.

Triggered by the tracker clearing the primary (tracker.py: unhealthy after `health.failure_threshold`
failed probes, a client's failed connection making the checker probe at once). With
`failover.mode = "external"` it only waits: the PostgreSQL provider follows a promotion done by
someone else. Otherwise, after one fresh probe of every node:

1. a node that already answers as primary (promoted by someone else) is followed;
2. candidates are the healthy, unfenced standbys no more than `max_failover_lag_bytes` behind the
   last WAL position seen on the primary, ranked by the WAL they received (most first: every
   other standby can then follow the winner, while one that received WAL past the point the winner
   was promoted at could not, without pg_rewind), then synchronous standby first (as the primary
   last reported in pg_stat_replication), then highest `priority`. A standby ahead of the
   synchronous one holds every commit the synchronous one acknowledged, so none is lost;
3. the winner is set PENDING and promoted (`pg_promote()`, or `failover.promote_command`), confirmed
   once a probe sees it out of recovery, which drains the switchover buffer (switchover_buffer.py);
4. the other standbys are pointed at it (`repoint_standbys`).

If no candidate qualifies or a promotion fails, it tries again every `health.interval` while there
is no primary; the old primary coming back in the meantime is simply taken back (tracker.py).

In a fleet coordinated through etcd (`[fleet] dcs_url`) each attempt goes through the fleet
(fleet_dcs.py): only the member holding the failover lock, and only with a majority of live
members seeing the primary down, runs it; the others follow its decision.
"""
import logging
import time

import gevent

from .events import PrimaryChanged
from .nodeops import NodeOperationFailed
from .tracker import NONE

log = logging.getLogger(__name__)
REPOINT_SECONDS = 30.0  # how long the other standbys get to stream from a new primary


class FailoverController:
    def __init__(self, config, tracker, health, ops):
        self.config = config
        self.tracker = tracker
        self.health = health
        self.ops = ops
        self.state = "idle"       # idle | detecting | promoting | waiting (no candidate) | repointing
        self.history = []         # one dict per finished failover/switchover (admin API, logs)
        self.failovers = 0
        self.fleet = None         # a FleetCoordinator (fleet_dcs.py): the fleet decides, one member promotes
        self._greenlet = None
        tracker.subscribe(self.on_event)

    def on_event(self, event):
        if (isinstance(event, PrimaryChanged) and event.state == NONE and not self.tracker.busy
                and self.config.failover.mode != "external" and self.running is False):
            self._greenlet = gevent.spawn(self._run, event.old)

    @property
    def running(self):
        return self._greenlet is not None and not self._greenlet.dead

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill()

    # --- automatic failover ----------------------------------------------------------------------
    def _run(self, old):
        started = time.monotonic()
        while self.tracker.state == NONE and self.config.failover.mode != "external":
            try:
                if self.fleet is not None:
                    if self.fleet.failover(old, lambda: self.failover(old, started=started)):
                        return
                elif self.failover(old, started=started):
                    return
            except NodeOperationFailed as e:
                log.error("failover attempt failed: %s", e.message)
            except Exception:
                log.exception("failover attempt failed")
            self.state = "waiting"
            gevent.sleep(self.config.health.interval)
        self.state = "idle"

    def failover(self, old=None, target=None, started=None, fence=False):
        """One attempt: promote target (or the best candidate); True once a primary is confirmed.
        With fence (an operator's failover), the old primary is fenced first, even if healthy."""
        tracker = self.tracker
        if tracker.busy:
            raise NodeOperationFailed("a failover or switchover is already running")
        started = started or time.monotonic()
        tracker.busy = True
        self.state = "detecting"
        try:
            if fence and old is not None:
                tracker.fence(old, "failover by the operator")
            self.health.probe_all()
            if tracker.current() is not None:
                return True
            claimant = next((n for n in tracker.claimants() if n != old and tracker.usable(n)), None)
            if claimant is not None and target is None:
                tracker.take_over(claimant, "already promoted; answers as primary")
                self._record("followed", old, claimant, started)
                return True
            candidate = tracker.node(target) if target else self.choose(old)
            if candidate is None:
                return False
            self.promote(candidate, old)
            self._record("failover", old, candidate.name, started)
            return True
        finally:
            tracker.busy = False
            if self.state != "repointing":
                self.state = "idle"

    def candidates(self, old=None):
        """[(node, is_sync, lag_bytes)], best first, of standbys fit to be promoted."""
        head = self.health.state(self.tracker.node(old)).lsn if old and self.tracker.node(old) else None
        limit = self.config.failover.max_failover_lag_bytes
        ranked = []
        for node in self.tracker.standbys():
            state = self.health.state(node)
            if node.name == old or not state.healthy or state.in_recovery is not True:
                continue
            lag = max(0, head - state.lsn) if head is not None and state.lsn is not None else 0
            if limit and lag > limit:
                log.error("failover: %s is %d bytes behind (failover.max_failover_lag_bytes = %d); "
                          "not promoting it", node.name, lag, limit)
                continue
            sync = self.health.is_sync(node)
            ranked.append(((-(state.lsn or 0), not sync, -node.priority, node.name), (node, sync, lag)))
        return [entry for _, entry in sorted(ranked, key=lambda r: r[0])]

    def choose(self, old=None):
        ranked = self.candidates(old)
        if not ranked:
            log.error("failover: no standby can be promoted (none healthy, in recovery and close enough); "
                      "writes wait")
            return None
        node, sync, lag = ranked[0]
        log.warning("failover: chose %s (%s, %d bytes behind) out of %s", node.name,
                    "synchronous" if sync else "asynchronous", lag,
                    ", ".join(f"{n.name} [lsn {self.health.state(n).lsn or 0} {'sync' if s else 'async'}]"
                              for n, s, _ in ranked))
        return node

    # --- promotion, shared with the planned switchover ---------------------------------------------
    def promote(self, node, old=None):
        """Promote node, confirm it as the primary, then repoint the other standbys."""
        tracker, cfg = self.tracker, self.config.failover
        self.state = "promoting"
        tracker.set_primary(node.name, f"promoting it, {old or 'no primary'} lost")
        try:
            if cfg.mode == "command":
                self.ops.command(cfg.promote_command, node=node.name, host=node.host, port=node.port,
                                 old_primary=old or "")
            else:
                self.ops.promote(node)
            self._await_confirmed(node)
        except BaseException:
            tracker.clear_primary(f"promotion of {node.name} failed")
            raise
        self.failovers += 1
        if cfg.repoint_standbys:
            self.state = "repointing"
            gevent.spawn(self.repoint_others, node, old)

    def _await_confirmed(self, node):
        deadline = time.monotonic() + self.config.failover.command_timeout
        while self.tracker.current() is None:
            self.health.probe(node)
            if self.tracker.current() is not None:
                return
            if time.monotonic() >= deadline:
                raise NodeOperationFailed(f"{node.name} still in recovery {self.config.failover.command_timeout:g} s "
                                          "after its promotion")
            gevent.sleep(0.05)

    def repoint_others(self, primary, old=None):
        """Point every other standby at the new primary, and check that it really streams from it:
        a standby that was busy (a probe timing out under load) or that has not reconnected yet is
        tried again, for up to REPOINT_SECONDS; one that still does not stream is reported."""
        pending = {n.name: n for n in self.tracker.standbys() if n.name not in (primary.name, old)}
        repointed, errors = set(), {}
        deadline = time.monotonic() + max(REPOINT_SECONDS, self.config.failover.command_timeout)
        try:
            while pending:
                for name, node in list(pending.items()):
                    try:
                        if name not in repointed:
                            self.ops.repoint(node, primary)
                            repointed.add(name)
                        if self.ops.streams_to(primary, node):
                            log.warning("failover: %s now streams from %s", name, primary.name)
                            del pending[name]
                    except NodeOperationFailed as e:
                        errors[name] = e.message
                if not pending or time.monotonic() >= deadline:
                    break
                gevent.sleep(0.5)
            for name in pending:
                log.error("failover: %s does not stream from %s after %g s (%s); if its WAL went past the "
                          "point %s was promoted at, it needs pg_rewind", name, primary.name,
                          max(REPOINT_SECONDS, self.config.failover.command_timeout),
                          errors.get(name, "repointed, not connected"), primary.name)
        finally:
            self.state = "idle"

    def _record(self, kind, old, new, started):
        took = time.monotonic() - started
        self.history.append({"kind": kind, "old": old, "new": new, "seconds": round(took, 3),
                             "at": time.time()})
        del self.history[:-50]
        log.warning("%s: %s -> %s in %.2f s", kind, old, new, took)
