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
