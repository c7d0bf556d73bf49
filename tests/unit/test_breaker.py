"""The circuit breaker's states without a server (topology/breaker.py)."""
from types import SimpleNamespace

from helios_proxy.topology.breaker import CLOSED, HALF_OPEN, OPEN, Breaker

CFG = SimpleNamespace(window_s=10.0, min_requests=4, failure_rate=0.5, open_s=2.0, max_open_s=5.0,
                      half_open_requests=2)


def test_it_trips_at_the_failure_rate_over_the_window_only():
    b = Breaker(CFG, "standby1")
    for t, ok in ((0, True), (1, False), (2, True)):
        b.record(ok, t)
    assert b.state == CLOSED  # (3 outcomes: fewer than min_requests)
    b.record(False, 3)
    assert b.state == OPEN and not b.allows(4)
    b2 = Breaker(CFG, "standby2")
    for t in range(4):
        b2.record(False, t * 20)  # each alone in its window
    assert b2.state == CLOSED


def test_half_open_closes_after_successes_or_reopens_for_twice_as_long():
    b = Breaker(CFG, "standby1")
    for t in range(4):
        b.record(False, t)
    assert b.allows(3 + 2.0) and b.state == HALF_OPEN
    b.record(False, 5.5)
    assert b.state == OPEN and b.open_s == 4.0 and not b.allows(9.0)
    assert b.allows(9.6)
    b.record(False, 9.7)
    assert b.open_s == 5.0  # (capped at max_open_s)
    assert b.allows(15)
    b.record(True, 15), b.record(True, 15.1)
    assert b.state == CLOSED and b.open_s == 2.0 and b.trips == 3


def test_refused_logins_in_a_row_trip_it_whatever_earlier_leases_did():
    b = Breaker(CFG, "standby2")
    for i in range(100):  # leases of connections opened before the node began refusing
        b.record(True, i / 100)
    for i in range(CFG.min_requests - 1):
        b.refused(1.0 + i / 100, "pg_hba.conf rejects connection")
    assert b.state == CLOSED
    b.refusals = 0  # a login that worked in between: counting starts again
    for i in range(CFG.min_requests):
        b.refused(2.0 + i / 100, "pg_hba.conf rejects connection")
    assert b.state == OPEN and "pg_hba" in b.reason
