"""The primary tracker's lifecycle and split-brain guard, failover candidate ranking and the
switchover buffer's bounds, driven with probe observations as the health checker reports them."""
import gevent
import pytest

from helios_proxy.config import load
from helios_proxy.topology.switchover_buffer import FailoverInProgress, SwitchoverBuffer
from helios_proxy.topology.events import NodeLeft, PrimaryChanged
from helios_proxy.topology.failover import FailoverController
from helios_proxy.topology.health import HealthChecker
from helios_proxy.topology.tracker import CONFIRMED, NONE, PENDING, PrimaryTracker


def config(**failover):
    return load({"nodes": [{"name": "a", "port": 5001, "role": "primary"},
                           {"name": "b", "port": 5002, "role": "standby", "priority": 1},
                           {"name": "c", "port": 5003, "role": "standby", "priority": 5}],
                 "failover": failover})


@pytest.fixture
def tracker():
    t = PrimaryTracker(config())
    t.events = []
    t.subscribe(t.events.append)
    return t


def test_lifecycle_pending_confirmed_none(tracker):
    assert tracker.state == CONFIRMED and tracker.current().name == "a"
    tracker.health_changed("a", False, "refused")
    assert tracker.state == NONE and tracker.current() is None and "refused" in tracker.reason
    tracker.set_primary("b", "promoting")
    assert tracker.state == PENDING and tracker.current() is None
    tracker.observe("b", True)  # still in recovery: stays pending
    assert tracker.state == PENDING
    tracker.observe("b", False, timeline=2, lsn=100)
    assert tracker.state == CONFIRMED and tracker.current().name == "b"
    assert [type(e) for e in tracker.events].count(PrimaryChanged) == 3
    assert [s.name for s in tracker.standbys()] == ["c"]


def test_the_primary_new_transactions_go_to_follows_every_change_of_the_tracker_and_the_buffer(tracker):
    """What the fast path's take reads for every transaction (tracker.confirmed, the buffer's pause)
    is what current() and ready() answer after each change, a reload's new node objects included."""
    buffer = SwitchoverBuffer(tracker, config())
    assert buffer.ready() is tracker.current() is tracker.node("a")
    buffer.pause("switchover")
    assert buffer.ready() is None and tracker.current().name == "a"
    buffer.resume()
    reloaded = load({"nodes": [{"name": "a", "port": 6001, "role": "primary"},
                               {"name": "b", "port": 5002, "role": "standby"}]})
    tracker.apply_config(reloaded)
    assert buffer.ready().port == 6001 and buffer.ready() is tracker.node("a")
    tracker.expect_confirmation("a provider")
    assert tracker.state == PENDING and buffer.ready() is None
    tracker.confirm_primary()
    assert buffer.ready().name == "a"
    tracker.fence("a", "operator")
    assert tracker.state == NONE and buffer.ready() is None and tracker.current() is None


def test_old_primary_coming_back_on_an_older_timeline_gets_no_traffic(tracker):
    tracker.observe("a", False, timeline=1, lsn=500)
    tracker.health_changed("a", False, "down")
    tracker.set_primary("b", "promoting")
    tracker.observe("b", False, timeline=2, lsn=600)
    tracker.observe("a", False, timeline=1, lsn=550)  # restarted, still thinks it is primary
    assert tracker.current().name == "b" and "a" in tracker.stale
    assert any(isinstance(e, NodeLeft) and e.node == "a" for e in tracker.events)
    tracker.observe("a", True)  # rebuilt as a standby: reads again
    assert "a" not in tracker.stale and {n.name for n in tracker.standbys()} == {"a", "c"}


def test_promotion_outside_the_proxy_wins_by_timeline(tracker):
    tracker.observe("a", False, timeline=3, lsn=900)
    tracker.observe("c", False, timeline=4, lsn=100)
    assert tracker.current().name == "c" and "a" in tracker.stale


def test_split_brain_on_equal_footing_stops_writes_until_the_operator_decides(tracker):
    tracker.observe("a", False, timeline=3, lsn=900)
    tracker.observe("b", False, timeline=3, lsn=900)
    assert tracker.state == NONE and tracker.current() is None and {"a", "b"} <= tracker.stale
    tracker.observe("a", False, timeline=3, lsn=900)
    assert tracker.current() is None  # not taken back on its own
    tracker.stale.discard("a")
    tracker.set_primary("a", "operator")
    tracker.confirm_primary()
    assert tracker.current().name == "a"


def test_standalone_tracker_ignores_probes():
    t = PrimaryTracker(config(), follow=False)
    t.observe("a", True)
    t.observe("b", False, timeline=9, lsn=1)
    assert t.current().name == "a"


def test_candidates_most_wal_then_sync_then_priority_and_lag_limit():
    cfg = config(max_failover_lag_bytes=1000)
    tracker = PrimaryTracker(cfg)
    health = HealthChecker(cfg, {})
    controller = FailoverController(cfg, tracker, health, ops=None)
    nodes = {n.name: n for n in cfg.nodes}
    health.state(nodes["a"]).lsn = 10_000
    for name, lsn in (("b", 9_900), ("c", 9_950)):
        health.state(nodes[name]).in_recovery, health.state(nodes[name]).lsn = True, lsn
    health.replication = {"b": "sync", "c": "async"}
    assert [n.name for n, _, _ in controller.candidates("a")] == ["c", "b"]  # c received more: b can follow it
    health.state(nodes["c"]).lsn = 9_900
    assert [n.name for n, _, _ in controller.candidates("a")] == ["b", "c"]  # as much: sync first
    health.replication = {"b": "async", "c": "async"}
    assert [n.name for n, _, _ in controller.candidates("a")] == ["c", "b"]  # then priority
    health.state(nodes["c"]).lsn = 8_000                                       # 2000 behind: too far
    assert [n.name for n, _, _ in controller.candidates("a")] == ["b"]
    health.state(nodes["b"]).healthy = False
    assert controller.candidates("a") == [] and controller.choose("a") is None


def test_buffer_waits_for_a_confirmed_primary_then_bounds():
    cfg = config(buffer_timeout=0.3, buffer_max_queries=1)
    tracker = PrimaryTracker(cfg)
    buffer = SwitchoverBuffer(tracker, cfg)
    tracker.clear_primary("test")
    waiter = gevent.spawn(buffer.primary)
    gevent.sleep(0.01)
    with pytest.raises(FailoverInProgress, match="already wait"):  # only one may wait
        buffer.primary()
    tracker.set_primary("b", "test")
    tracker.confirm_primary()
    assert waiter.get(timeout=1).name == "b"
    tracker.clear_primary("again")
    with pytest.raises(FailoverInProgress, match="failover in progress.*waited 0.3") as info:
        buffer.primary()
    assert info.value.sqlstate == "57P03"
    buffer.pause("switchover")
    tracker.set_primary("a", "test")
    tracker.confirm_primary()
    late = gevent.spawn(buffer.primary)
    gevent.sleep(0.05)
    assert not late.ready()
    buffer.resume()
    assert late.get(timeout=1).name == "a"
