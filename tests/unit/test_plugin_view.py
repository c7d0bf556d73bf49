"""What plugins see (plugins/view.py): the session and the query, read-only."""
from types import SimpleNamespace

import pytest

from helios_proxy.plugins.view import QueryInfo, SessionInfo
from helios_proxy.pool.session_state import SessionSettings


def session():
    settings = SessionSettings()
    settings.set({"application_name": "billing"})
    identity = SimpleNamespace(id=7, user="app", database="shop", peer=("10.0.0.5", 50000), tls=True, local=False,
                               mode="transaction", backend_pid=4242, tenant=SimpleNamespace(name="acme"))
    return SimpleNamespace(identity=identity, settings=settings, plan=SimpleNamespace(status=b"T"))


def test_a_plugin_reads_what_it_may_know_of_the_session():
    info = SessionInfo(session())
    assert (info.id, info.user, info.database, info.peer[0], info.tls, info.mode, info.tenant) == \
        (7, "app", "shop", "10.0.0.5", True, "transaction", "acme")
    assert info.application_name == "billing" and info.in_transaction and info.backend_pid == 4242


def test_a_plugin_cannot_write_the_session_or_the_query():
    s = session()
    ctx = SimpleNamespace(sql="select 1", protocol="simple", tags={}, session=s)
    info = QueryInfo(ctx)
    with pytest.raises(AttributeError, match="read-only"):
        info.session.user = "postgres"
    with pytest.raises(AttributeError, match="read-only"):
        info.sql = "drop table t"
    info.tags["seen_by"] = "audit"  # (its annotations: the one thing it writes)
    assert ctx.tags == {"seen_by": "audit"} and s.identity.user == "app" and info.sql == "select 1"
