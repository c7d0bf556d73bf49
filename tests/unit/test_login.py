"""The login's first step alone (frontend/handshake.py identify): who the client is, from its startup
packet, written into the session's Identity, and what it must be refused before any password is
asked. The whole login against a real cluster is in tests/test_auth.py and tests/test_clients.py."""
from types import SimpleNamespace

import pytest

from helios_proxy.config import load
from helios_proxy.errors import FatalError
from helios_proxy.frontend.handshake import identify
from helios_proxy.frontend.identity import Identity
from helios_proxy.pool.session_state import SessionSettings
from helios_proxy.protocol.startup import STARTUP, StartupPacket


def session(tls=False, local=False, disabled=(), **config):
    cfg = load({"nodes": [{"name": "a"}], **config}, environ={})
    sent = []
    who = Identity(1, ("127.0.0.1", 5000), local)
    who.tls = tls
    return SimpleNamespace(proxy=SimpleNamespace(config=cfg, tenants=None, disabled=set(disabled)), identity=who,
                           settings=SessionSettings(), sock=None, send=sent.append, sent=sent)


def packet(minor=0, extensions=(), **params):
    return StartupPacket(STARTUP, minor=minor, params=params, extensions=list(extensions))


def test_the_user_its_database_its_pool_mode_and_its_settings():
    s = session(pool={"mode": "transaction"}, databases={"reports": {"mode": "session"}},
                users={"batch": {"mode": "statement"}})
    user, settings, startup = identify(s, packet(user="app", application_name="x", options="-c work_mem=8MB"))
    assert (user, s.identity.user, s.identity.database) == ("app", "app", "app")  # the database defaults to the user
    assert (s.identity.mode, s.identity.pooled) == ("transaction", True)
    assert settings == {"application_name": "x", "work_mem": "8MB"}  # (user, database, options are not settings)
    assert startup["work_mem"] == "8MB" and s.sent == []
    identify(s, packet(user="app", database="reports"))
    assert (s.identity.database, s.identity.mode, s.identity.pooled) == ("reports", "session", False)
    identify(s, packet(user="batch", database="reports"))
    assert s.identity.mode == "statement"  # [users.NAME] over [databases.NAME]


def test_a_newer_protocol_minor_or_extensions_are_answered_with_3_0():
    s = session()
    identify(s, packet(minor=2, extensions=["_pq_.x"], user="app"))
    assert len(s.sent) == 1 and s.sent[0][:1] == b"v"  # NegotiateProtocolVersion


@pytest.mark.parametrize("case, sqlstate, words", [
    (dict(params={}), "28000", "no PostgreSQL user name"),
    (dict(params={"user": "app", "replication": "database"}), "0A000", "replication connections"),
    (dict(params={"user": "app", "database": "off"}, disabled={"off"}), "55000", "not currently accepting"),
    (dict(params={"user": "app"}, require_tls=True), "28000", "TLS is required"),
])
def test_what_is_refused_before_any_password_is_asked(case, sqlstate, words):
    s = session(disabled=case.get("disabled", ()))
    if case.get("require_tls"):
        s.proxy.config.tls.client_mode = "require"  # (its certificate files are not needed here)
    with pytest.raises(FatalError) as e:
        identify(s, packet(**case["params"]))
    assert e.value.sqlstate == sqlstate and words in e.value.message


def test_tls_required_lets_tls_and_unix_socket_clients_in():
    for tls, local in ((True, False), (False, True)):
        s = session(tls=tls, local=local)
        s.proxy.config.tls.client_mode = "require"
        assert identify(s, packet(user="app"))[0] == "app"
