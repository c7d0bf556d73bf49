"""The session's parts, each alone: what its owner may do with it, and what it promises."""
from types import SimpleNamespace

import pytest

from helios_proxy.frontend.identity import Identity
from helios_proxy.pool.lease import Lease
from helios_proxy.pool.session_state import SessionSettings, settings_key
from helios_proxy.routing.state import RouteState
from helios_proxy.stats import Counters


def test_the_route_is_aimed_taken_once_and_the_write_position_only_grows():
    route = RouteState()
    assert route.take() == ("primary", None, None, None)  # (nothing decided: the primary)
    route.aim(("standby", "standby2"), lag=1000, tables=("orders",))
    assert route.take() == ("standby", "standby2", 1000, ("orders",))
    assert route.take() == ("primary", None, None, None)  # (used up by the lease it went to)
    route.read_after(500)
    route.read_after(200)  # (an older position never moves it back)
    assert route.ryw_lsn == 500


def test_settings_keep_their_key_and_a_tenants_forced_values():
    settings = SessionSettings()
    assert settings.values == {} and settings.key == () and not settings.dirty and not settings.checked
    settings.set({"TimeZone": "UTC", "search_path": "app"})
    assert settings.key == settings_key({"search_path": "app", "TimeZone": "UTC"})  # (order does not matter)
    settings.forced = {"helios.tenant": "acme"}
    settings.set({"helios.tenant": "globex", "TimeZone": "UTC"})  # whatever the client set, the tenant's stays
    assert settings.values == {"helios.tenant": "acme", "TimeZone": "UTC"}
    assert settings.key == settings_key(settings.values)


def test_counters_and_identity_start_empty():
    counters = Counters()
    assert (counters.queries, counters.transactions, counters.bytes_in, counters.bytes_out,
            counters.wait_seconds, counters.wait_started) == (0, 0, 0, 0, 0.0, None)
    who = Identity(7, ("10.0.0.1", 5000))
    assert (who.id, who.peer, who.local, who.tls, who.user, who.mode, who.pooled, who.tenant) == \
        (7, ("10.0.0.1", 5000), False, False, None, "session", False, None)
    with pytest.raises(AttributeError):
        who.nickname = "x"  # (__slots__: a part does not grow by accident either)


class Pump:
    def __init__(self, log):
        self.log = log
        log.append("start")

    def stop(self, block):
        self.log.append("stop")


def test_a_borrowed_lease_gets_its_pump_back_whatever_happened(monkeypatch):
    log = []
    monkeypatch.setattr(Lease, "starter", lambda session, lease: Pump(log))
    lease = Lease(SimpleNamespace(), pool=None, server="conn").run()
    with lease.borrow() as server:
        assert server == "conn" and lease.pump is None and log == ["start", "stop"]
    assert lease.pump is not None and log == ["start", "stop", "start"]
    with pytest.raises(RuntimeError):
        with lease.borrow():
            raise RuntimeError("the proxy's own statement failed")
    assert lease.pump is not None and log[-2:] == ["stop", "start"]
