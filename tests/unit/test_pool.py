"""Pool bookkeeping without a server: limits, the waiting line, RECONNECT generations."""
import time

import gevent
import pytest

from helios_proxy.backend.credentials import Credentials
from helios_proxy.config import load
from helios_proxy.errors import ProxyError
from helios_proxy.pool import pool as pool_module


class FakeConnection:
    opened = 0

    def __init__(self, node, database, credentials, options):
        FakeConnection.opened += 1
        self.pid = FakeConnection.opened
        self.params, self.broken, self.generation, self.cancelling = {"server_version": "15"}, False, 0, []
        self.created = self.last_used = time.monotonic()
        self.watched, self.closed = False, False

    def connect(self):
        return self

    def idle_and_clean(self):
        return not self.broken

    def close(self):
        self.closed = self.broken = True


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(pool_module, "ServerConnection", FakeConnection)
    config = load({"pool": {"max_size": 2, "acquire_timeout": 0.3, "reserve_size": 0},
                   "nodes": [{"name": "a"}]}, environ={})
    return pool_module.Pool(config.nodes[0], "db", Credentials("u"), config)


def test_at_most_max_size_and_waiters_are_served_first_come_first_served(pool):
    a, b = pool.acquire(), pool.acquire()
    assert pool.size == 2 and a is not b
    order = []
    waiters = [gevent.spawn(lambda i=i: order.append((i, pool.acquire()))) for i in range(2)]
    gevent.sleep(0.01)
    assert pool.stats()["cl_waiting"] == 2
    pool.release(a)
    pool.release(b)
    gevent.joinall(waiters, timeout=2)
    assert order == [(0, a), (1, b)] and pool.size == 2


def test_waiting_too_long_is_a_clear_57014(pool):
    pool.acquire(), pool.acquire()
    with pytest.raises(ProxyError) as info:
        pool.acquire()
    assert info.value.sqlstate == "57014" and "max_size 2" in info.value.message


def test_a_connection_that_is_not_reusable_is_closed_and_its_slot_freed(pool):
    conn = pool.acquire()
    pool.release(conn, reusable=False)
    assert conn.closed and pool.size == 0


def test_reconnect_closes_idle_now_and_busy_ones_when_released(pool):
    busy, idle = pool.acquire(), pool.acquire()
    pool.release(idle)
    pool.reconnect()
    assert idle.closed and not busy.closed and pool.closing == 1
    pool.release(busy)
    assert busy.closed and pool.closing == 0 and pool.size == 0
    fresh = pool.acquire()
    pool.release(fresh)
    assert not fresh.closed and pool.size == 1  # new connections are of the new generation
