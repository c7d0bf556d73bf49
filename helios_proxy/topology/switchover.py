"""Planned switchover: move the primary role to a chosen standby with no errors for clients that
are between transactions.

1. new primary transactions are paused (they wait in the switchover buffer, switchover_buffer.py);
2. transactions in flight on the old primary get `failover.switchover_timeout` to finish; a
   session-pooled client between transactions is moved off it (its settings and prepared
   statements are re-created on the new primary at its next query); sessions still in a
   transaction after the timeout (and pinned pooled clients) are ended with 57P01;
3. the old primary is fenced: no traffic from the proxy until `enable`, and
   `failover.fence_command` runs when set (e.g. stop it, so nothing else writes there);
4. the target replays every WAL byte the old primary wrote, then is promoted and confirmed;
5. the buffer drains to it; the other standbys are pointed at it.

In a fleet coordinated through etcd the member running it holds the failover lock, the others hold
their new transactions meanwhile and drain their own (step 2, each for itself): the old primary's
WAL head is read once every live member said it drained (or after switchover_timeout), so a
transaction another member acknowledged is in what the target replays. The decision it writes
moves them all (fleet_dcs.py).

A failure before the promotion puts everything back as it was (the old primary un-fenced).
"""
import logging
import time

import gevent

from .nodeops import NodeOperationFailed
from .tracker import PENDING, STANDBY

log = logging.getLogger(__name__)


def switchover(proxy, target_name):
    """Run a planned switchover to node target_name; returns a summary dict or raises
    NodeOperationFailed (with the reason) when it cannot be done."""
    tracker, controller = proxy.tracker, proxy.failover
    target = tracker.node(target_name)
    if target is None:
        raise NodeOperationFailed(f"no node named {target_name!r}")
    old = tracker.current()
    if old is None and tracker.state == PENDING:  # (a provider's first say at start, or a promotion)
        raise NodeOperationFailed(f"the primary is not confirmed yet ({tracker.reason}): try again once it is")
    if old is None:
        raise NodeOperationFailed("there is no confirmed primary to switch over from (use failover)")
    if target.name == old.name:
        raise NodeOperationFailed(f"{target.name} is the primary already")
    state = proxy.health.state(target)
    if tracker.roles.get(target.name) != STANDBY or not tracker.usable(target.name) or not state.healthy:
        raise NodeOperationFailed(f"{target.name} is not a healthy, enabled standby")
    if tracker.busy:
        raise NodeOperationFailed("a failover or switchover is already running")
    if controller.fleet is not None:  # the whole fleet moves: the others hold and drain theirs, then follow
        fleet = controller.fleet
        return fleet.switchover(old.name, target.name, lambda: _switch(proxy, old, target, fleet.wait_drained))
    return _switch(proxy, old, target)


def _switch(proxy, old, target, others=None):
    """others(deadline): in a fleet, wait until the other members drained theirs."""
    tracker, buffer, controller = proxy.tracker, proxy.buffer, proxy.failover
    cfg = proxy.config.failover
    started = time.monotonic()
    tracker.busy = True
    buffer.pause(f"switchover from {old.name} to {target.name}")
    promoted = False
    try:
        ended = drain(proxy, old, cfg.switchover_timeout)
        if others is not None:
            others(time.monotonic() + cfg.switchover_timeout)
        head = proxy.ops.position(old)
        tracker.fence(old.name, f"switchover to {target.name}")
        if cfg.fence_command:
            proxy.ops.command(cfg.fence_command, node=old.name, host=old.host, port=old.port)
        proxy.ops.wait_replayed(target, head, max(cfg.switchover_timeout, 1.0))
        controller.promote(target, old.name)
        promoted = True
    except BaseException:
        if not promoted:
            tracker.enable(old.name)
            tracker.take_over(old.name, "switchover failed; keeping the old primary")
        raise
    finally:
        tracker.busy = False
        buffer.resume()
    took = time.monotonic() - started
    controller._record("switchover", old.name, target.name, started)
    # new transactions were held from the pause to here: no query waited longer than that
    return {"old": old.name, "new": target.name, "seconds": round(took, 3), "sessions_ended": ended,
            "paused_s": round(took, 3)}


def drain(proxy, node, timeout):
    """Wait until no session holds a server connection to node, nor runs the proxy's own work on
    one (own_work.py: a batch of INSERTs, an /api/sql or GraphQL request; its commit must be in
    the WAL the new primary replays before it is promoted). A
    session-mode session between transactions is moved off it (its settings and prepared
    statements follow it to the new primary); one still in a transaction after timeout is ended."""
    deadline = time.monotonic() + timeout
    moved = 0
    while True:
        holding = [s for s in list(proxy.sessions) if s.server is not None and s.server.node.name == node.name]
        for session in holding:
            if session.slot.movable() and session.slot.move_off():
                moved += 1
        holding = [s for s in holding if s.server is not None]
        own = proxy.own_work.count(node=node)
        if not holding and not own or time.monotonic() >= deadline:
            break
        gevent.sleep(0.01)
    if own:
        log.warning("switchover: ended %d transaction(s) of the proxy's own (batched inserts, /api/sql, "
                    "GraphQL) still running on %s after %g s", own, node.name, timeout)
        proxy.own_work.end_on(node)
    if moved:
        log.warning("switchover: moved %d idle session(s) off %s", moved, node.name)
    for session in holding:
        session.terminate(f"terminating connection: switchover away from {node.name}")
    if holding:
        log.warning("switchover: ended %d session(s) still in a transaction on %s after %g s", len(holding),
                    node.name, timeout)
        gevent.sleep(0.05)
    return len(holding)
