"""Concurrency guards in line (limits/): first come first served, and a waiter that gives up or goes
away never keeps a slot."""
import time
import types

import gevent
import pytest

from helios_proxy.limits import Exceeded, Limit


def guard(max_wait_ms=5000):
    return Limit(types.SimpleNamespace(name="g", kind="concurrency", key="user", match="", max=1,
                                       on_exceed="wait", max_wait_ms=max_wait_ms))


def test_waiters_get_the_slot_in_the_order_they_came_and_no_newcomer_jumps_the_line():
    limit, order = guard(), []
    limit.take("u")

    def waiter(name):
        limit.take("u")
        order.append(name)
        gevent.sleep(0.01)
        limit.release("u")

    line = [gevent.spawn(waiter, name) for name in "abc"]
    gevent.sleep(0.01)
    limit.release("u")  # a's turn, before a even runs: a newcomer now queues behind c
    assert limit.wait_s("u", time.monotonic()) is None
    late = gevent.spawn(waiter, "late")
    gevent.joinall(line + [late], timeout=5)
    assert order == ["a", "b", "c", "late"]
    assert limit.state["u"].running == 0 and not limit.state["u"].waiters
    assert limit.passed == 5 and limit.waited == 4


def test_a_waiter_that_times_out_gets_53400_and_leaves_the_line():
    limit = guard(max_wait_ms=50)
    limit.take("u")
    with pytest.raises(Exceeded, match='rate limit "g" exceeded for user "u"'):
        limit.take("u")
    assert not limit.state["u"].waiters and limit.rejected == 1
    limit.release("u")
    limit.take("u")  # the slot is free again


def test_a_waiter_that_goes_away_leaves_the_line():
    limit = guard()
    limit.take("u")
    first, second = gevent.spawn(limit.take, "u"), gevent.spawn(limit.take, "u")
    gevent.sleep(0.01)
    first.kill()  # its client went away while it waited
    limit.release("u")
    second.join(timeout=2)
    assert second.successful() and limit.state["u"].running == 1 and not limit.state["u"].waiters


def shared_pair(tmp_path, **cfg):
    """The same limit in two workers mapping one table (limits/shared.py)."""
    from helios_proxy.limits import shared
    path = shared.create(str(tmp_path))
    cfg = types.SimpleNamespace(**{"name": "s", "key": "user", "match": "", "on_exceed": "reject",
                                   "max_wait_ms": 0, **cfg})
    return [shared.SharedLimit(cfg, shared.SharedTable(path, worker, 2)) for worker in (0, 1)]


@pytest.mark.parametrize("kind, settings", [("token_bucket", {"rate": 0.001, "burst": 5}),
                                            ("sliding_window", {"window_s": 60.0, "max_queries": 5})])
def test_workers_sharing_a_table_hold_one_limit_together(tmp_path, kind, settings):
    a, b = shared_pair(tmp_path, kind=kind, **settings)
    for limit in (a, b, a, b, a):
        limit.take("u")
    for limit in (a, b):
        with pytest.raises(Exceeded):
            limit.take("u")
    b.take("other user")
    left = 0.0 if kind == "token_bucket" else 5  # (tokens left, or queries in the window)
    assert a.levels()["u"] == b.levels()["u"] == pytest.approx(left, abs=0.01)


def test_a_shared_concurrency_guard_and_a_restarted_worker_giving_its_slots_back(tmp_path):
    from helios_proxy.limits import shared
    a, b = shared_pair(tmp_path, kind="concurrency", max=2)
    a.take("u")
    b.take("u")
    with pytest.raises(Exceeded):
        a.take("u")
    b.release("u")
    a.take("u")
    assert b.levels() == {"u": 2}
    # worker 0 dies holding two slots; its successor maps the table and gives them back
    shared.SharedTable(a.table.path, 0, 2).forget_worker()
    assert b.levels() == {"u": 0}
