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


class Pool:
    def __init__(self):
        self.released = []

    def release(self, server, reusable=True):
        self.released.append((server, reusable))


def test_a_lease_ends_into_its_pool_and_a_replay_switches_it_closing_the_lost_connection():
    old, new = Pool(), Pool()
    lease = Lease(SimpleNamespace(), pool=old, server="lost")
    lease.switch(new, "found")
    assert (lease.pool, lease.server) == (new, "found") and old.released == [("lost", False)]
    lease.end(reusable=True)
    assert new.released == [("found", True)]


def test_settings_change_read_back_and_apply_through_their_methods():
    settings = SessionSettings()
    settings.changed()
    assert settings.dirty
    settings.read_back({"search_path": "b"})
    assert not settings.dirty and settings.values == {"search_path": "b"}
    settings.applied()
    settings.force({"helios.tenant": "acme"})
    settings.set({})
    assert settings.checked and settings.values == {"helios.tenant": "acme"}


def test_the_statement_book_forgets_discards_and_remembers_ddl_once():
    from helios_proxy.pool.prepared import StatementBook
    book = StatementBook()
    name, stmt = book.parse(b"s1\0select 1\0\0\0")
    book.queries["s1"] = "its query"
    assert book.lookup("s1") is stmt
    book.forget("s1")  # (the server side is gone: its completions' query stays until the client closes it)
    assert "s1" not in book.by_name and book.queries == {"s1": "its query"}
    book.closed("s1")
    assert book.queries == {}
    book.parse(b"s2\0select 2\0\0\0")
    book.discard()
    assert book.by_name == {} and book.discard_pending
    book.discarded()
    assert not book.discard_pending
    book.schema_change()
    assert book.take_schema_change() and not book.take_schema_change()
    assert book.texts_of(list) is book.texts_of(dict)  # (made once, at first use)


def test_a_feature_cannot_put_its_state_on_the_session():
    from helios_proxy.frontend.session import ClientSession
    session = ClientSession.__new__(ClientSession)
    session.closing = "admin"  # (a field of its own)
    with pytest.raises(AttributeError):
        session.quota_left = 3  # (__slots__: a feature brings a part of its own instead)
