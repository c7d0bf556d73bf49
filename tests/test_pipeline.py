"""The per-query pipeline: stages built from config, and a stage's verdict as clients see it."""
import psycopg
import pytest

from helios_proxy import pipeline
from helios_proxy.config import load
from helios_proxy.pipeline.stages.journal import Journal
from helios_proxy.pipeline.stages.pooling_guard import PoolingGuard
from helios_proxy.pipeline.stages.sql_prepare import SqlPreparedStatements

from .wire import Wire, error_of
from helios_proxy.protocol import codec

NODE = {"name": "p", "port": 5432}


def test_disabled_stage_is_not_built():
    off = {"replay": {"enabled": False}}
    assert pipeline.build(load({"nodes": [NODE], **off}, environ={})) == ()
    stages = pipeline.build(load({"nodes": [NODE], "pool": {"mode": "transaction"}, **off}, environ={}))
    assert [type(s) for s in stages] == [PoolingGuard, SqlPreparedStatements]
    stages = pipeline.build(load({"nodes": [NODE]}, environ={}))  # transaction replay is on by default
    assert [type(s) for s in stages] == [Journal]


def test_rewrite_then_reject_in_order():
    class Upper(pipeline.Stage):
        def process(self, ctx):
            return pipeline.StageResult.rewrite(ctx.sql.upper())

    class Seen(pipeline.Stage):
        def process(self, ctx):
            return pipeline.StageResult.reject("P0001", ctx.sql)

    ctx = pipeline.QueryContext(session=None, sql="select 1")
    result = pipeline.run((Upper(None), Seen(None)), ctx)
    assert (result.action, result.message) == (pipeline.Action.REJECT, "SELECT 1")


@pytest.fixture
def limited(start_proxy):
    return start_proxy(pipeline={"max_query_bytes": 40})


def test_long_simple_query_rejected_with_54000_and_session_goes_on(limited):
    with psycopg.connect(limited.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_query_bytes"):
            conn.execute("select '" + "x" * 100 + "'")
        assert conn.execute("select 'short'").fetchone()[0] == "short"


def test_long_extended_query_rejected_up_to_sync(limited):
    w = Wire(limited.port)
    w.startup(user="postgres", database="postgres")
    w.send(codec.query("begin"))
    w.until_ready()
    w.send(codec.parse("select '" + "y" * 100 + "'") + codec.bind([]) + codec.execute() + codec.SYNC
           + codec.query("select 'next'"))
    first = w.until_ready()
    assert error_of(first)["C"] == "54000"
    assert first[-1] == (b"Z", b"E")  # the error failed the transaction, as any error does in PostgreSQL
    second = w.until_ready()
    assert error_of(second)["C"] == "25P02" and second[-1] == (b"Z", b"E")
    w.send(codec.query("rollback") + codec.query("select 'next'"))
    w.until_ready()
    assert (b"D", b"\x00\x01\x00\x00\x00\x04next") in w.until_ready()
    w.close()


def test_reject_waits_for_earlier_replies(limited):
    """A rejected query's error comes after the answers to queries sent before it."""
    w = Wire(limited.port)
    w.startup(user="postgres", database="postgres")
    w.send(codec.query("select pg_sleep(0.3), 'first'") + codec.query("select '" + "z" * 100 + "'"))
    first, second = w.until_ready(), w.until_ready()
    assert error_of(first) is None and any(t == b"D" for t, _ in first)
    assert error_of(second)["C"] == "54000"
    w.close()


def test_refused_parse_after_unsynced_messages_keeps_one_ready_per_sync(limited):
    """Parse/Bind/Execute already forwarded, then a refused Parse, then Sync: the client gets the first
    query's rows, our error, and exactly one ReadyForQuery."""
    w = Wire(limited.port)
    w.startup(user="postgres", database="postgres")
    w.send(codec.parse("select 'first'") + codec.bind([]) + codec.execute()
           + codec.parse("select '" + "q" * 100 + "'") + codec.bind([]) + codec.execute() + codec.SYNC
           + codec.query("select 'next'"))
    first = w.until_ready()
    types = [t for t, _ in first]
    assert types == [b"1", b"2", b"D", b"C", b"E", b"Z"], types
    assert error_of(first)["C"] == "54000"
    second = w.until_ready()
    assert (b"D", b"\x00\x01\x00\x00\x00\x04next") in second
    w.close()


def test_large_queries_are_not_parsed_and_keep_pooled_semantics(start_proxy, cluster):
    """Beyond pipeline.max_parse_bytes a query goes to the primary unparsed; its effects on session
    state are still followed (set_config) or the client is pinned (a temporary table)."""
    from .test_routing import nodes, wait_standby_reads
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 2}, nodes=nodes(cluster)[:2],
                        pipeline={"max_parse_bytes": 4096})
    wait_standby_reads(proxy)
    pad = "x" * 100_000
    with psycopg.connect(proxy.dsn(), autocommit=True) as a, psycopg.connect(proxy.dsn(), autocommit=True) as b:
        row = a.execute(f"select length('{pad}'), pg_is_in_recovery()").fetchone()
        assert row == (100_000, False)  # a read, but too large to classify: the primary
        a.execute(f"select length('{pad}'), pg_catalog.set_config('application_name', 'big', false)")
        assert a.execute("show application_name").fetchone() == ("big",)
        assert b.execute("show application_name").fetchone() == ("",)
        a.execute(f"create temporary table big_tmp as select '{pad}'::text as v")
        for _ in range(5):  # pinned: the temporary table stays with its client
            assert a.execute("select length(v) from big_tmp").fetchone() == (100_000,)
            b.execute("select 1")


def test_default_max_query_bytes_refuses_a_65_mib_query_without_reading_it_twice(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction"})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_query_bytes"):
            conn.execute("select length('" + "x" * (65 << 20) + "')")
        assert conn.execute("select 'next'").fetchone() == ("next",)
