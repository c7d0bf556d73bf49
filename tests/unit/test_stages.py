"""Stages alone: a QueryContext over a session that is only its Identity (who the client is, its
pool mode), and the decision each stage leaves as data (pipeline/context.py Decisions), which the
forwarder applies (frontend/decisions.py). A stage reads the session; it never writes it
(tests/unit/test_layers.py)."""
from types import SimpleNamespace

import pytest

from helios_proxy.config import load
from helios_proxy.frontend.identity import Identity
from helios_proxy.pipeline.context import QueryContext
from helios_proxy.pipeline.stage import Action
from helios_proxy.pipeline.stages.pooling_guard import PoolingGuard

CONFIG = load({"nodes": [{"name": "a"}], "pool": {"mode": "transaction"}}, environ={})


def run(stage, sql, mode="transaction"):
    who = Identity(1, ("127.0.0.1", 1))
    who.mode, who.pooled = mode, mode != "session"
    ctx = QueryContext(SimpleNamespace(identity=who), sql)
    return stage.process(ctx), ctx.decided


@pytest.mark.parametrize("sql, pin, settings, discard, ddl", [
    ("select 1", None, False, False, False),
    ("set search_path = app", None, True, False, False),
    ("set local work_mem = '8MB'", None, False, False, False),  # (ends with its transaction)
    ("select set_config('search_path', 'b', false)", None, True, False, False),
    ("listen jobs", "LISTEN", False, False, False),
    ("create temp table t (a int)", "a temporary table", False, False, True),
    ("select pg_advisory_lock(1)", "a session-level advisory lock", False, False, False),
    ("discard all", None, True, True, False),
    ("alter table t add column b int", None, False, False, True),
])
def test_the_pooling_guard_decides_what_a_statement_does_to_the_session(sql, pin, settings, discard, ddl):
    result, decided = run(PoolingGuard(CONFIG), sql)
    assert result.action is Action.CONTINUE
    got = (None, False, False, False) if decided is None else \
        (decided.pin, decided.settings_changed, decided.discard, decided.schema_changed)
    assert got == (pin, settings, discard, ddl)


def test_session_pooling_needs_no_guard_and_statement_pooling_refuses_transaction_blocks():
    stage = PoolingGuard(CONFIG)
    assert run(stage, "listen jobs", mode="session") == (run(stage, "select 1")[0], None)
    result, _ = run(stage, "begin", mode="statement")
    assert result.action is Action.REJECT and result.sqlstate == "0A000"
    assert run(stage, "begin")[0].action is Action.CONTINUE  # (transaction pooling: the block keeps its lease)
