"""The query rewriter ([[rewrite]], rewrite/) end to end: rules in order by regular expression and
by fingerprint, schema prefixes, normalization and hints, dry runs, `apply = "first"`, the
extended protocol (a named statement rewritten once), plugins' rules, reload, bad rules refused.
What the server really ran is read back from pg_stat_statements."""
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from pglast.parser import fingerprint

from tests.fix_proxy import ProxyProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = [
    {"name": "legacy", "match": r"\bfrom rw_legacy\b", "replace": "from rw_new"},
    {"name": "schema", "match": r"\brw_only_in_schema\b", "schema_prefix": "rw_app", "user": "postgres"},
    {"name": "tidy", "match": "rw_tidy", "normalize": True, "hint": "route=primary"},
    {"name": "dry", "match": "rw_dry", "replace": "rw_nowhere", "dry_run": True},
    {"name": "stop-here", "match": "as rw_stop", "replace": "as rw_stopped", "apply": "first"},
    {"name": "never-reached", "match": "rw_stopped", "replace": "rw_not_stopped"},
    {"name": "by-shape", "fingerprint": fingerprint("select 1 as rw_fp"), "replace": "rw_fp_rewritten",
     "match": "rw_fp"},
]


@pytest.fixture
def tables(direct):
    direct.cursor().execute(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; "
        "DROP TABLE IF EXISTS rw_legacy, rw_new, rw_plugin_new; DROP SCHEMA IF EXISTS rw_app CASCADE; "
        "CREATE TABLE rw_legacy (id int, name text); INSERT INTO rw_legacy VALUES (1, 'legacy'); "
        "CREATE TABLE rw_new (id int, name text); INSERT INTO rw_new VALUES (1, 'new'); "
        "CREATE TABLE rw_plugin_new (id int); INSERT INTO rw_plugin_new VALUES (7); "
        "CREATE SCHEMA rw_app; CREATE TABLE rw_app.rw_only_in_schema (x int); "
        "INSERT INTO rw_app.rw_only_in_schema VALUES (42); SELECT pg_stat_statements_reset()")
    return direct


def server_ran(direct, like):
    cur = direct.cursor()
    cur.execute("SELECT query FROM pg_stat_statements WHERE query LIKE %s ORDER BY query", (like,))
    return [r[0] for r in cur.fetchall()]


def rule_hits(proxy):
    status, rules = proxy.api("GET", "/rewrite")
    assert status == 200
    return {r["name"]: (r["hits"], r["dry_run_hits"]) for r in rules}


def test_rules_apply_in_order_and_count(start_proxy, tables):
    proxy = start_proxy(rewrite=RULES)
    one = lambda sql: proxy.query(sql)[0]  # noqa: E731
    assert one("select name from rw_legacy where id = 1") == ("new",)
    assert one("select x from rw_only_in_schema") == (42,)
    assert one("select   'x'  as rw_tidy -- a comment\n  ,  2") == ("x", 2)
    assert one("select 'kept' as rw_dry") == ("kept",)  # (a dry run changes nothing)
    conn = proxy.connect()
    cur = conn.cursor()
    cur.execute("select 1 as rw_stop")
    assert cur.description[0].name == "rw_stopped"  # ("never-reached" did not run after it)
    cur.execute("select 2 as rw_fp")
    assert cur.description[0].name == "rw_fp_rewritten"  # (same shape: literals do not count)
    cur.execute("select 'rw_fp' from rw_new")  # (another shape: left alone)
    assert cur.fetchone() == ("rw_fp",)
    conn.close()
    assert server_ran(tables, "%rw_tidy%") == ["/*+ route=primary */ select $1 as rw_tidy , $2"]
    assert server_ran(tables, "%rw_only_in_schema%") == ["SELECT x FROM rw_app.rw_only_in_schema"]
    assert rule_hits(proxy) == {"legacy": (1, 0), "schema": (1, 0), "tidy": (1, 0), "dry": (0, 1),
                                "stop-here": (1, 0), "never-reached": (0, 0), "by-shape": (1, 0)}
    assert "rewrite rule dry (dry run) would change" in proxy.output()


def test_a_named_statement_is_rewritten_once_and_keeps_its_parameters(start_proxy, tables):
    proxy = start_proxy(pool={"mode": "transaction"}, rewrite=RULES[:1])
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for _ in range(3):
            row = conn.execute("select name from rw_legacy where id = %s", (1,), prepare=True).fetchone()
            assert row == ("new",)
    assert rule_hits(proxy)["legacy"] == (1, 0)
    assert server_ran(tables, "%rw_new where id%") == ["select name from rw_new where id = $1"]


def test_plugins_contribute_rules_and_a_bad_one_is_refused_alone(cluster, tmp_path, tables):
    proxy = ProxyProcess(str(tmp_path), cluster, plugins={"modules": ["tests.plugins.rewrite"]},
                         rewrite=RULES[:1]).start(env={"PYTHONPATH": ROOT})
    try:
        assert proxy.query("select id from rw_plugin_old") == [(7,)]
        assert proxy.query("select name from rw_legacy") == [("new",)]
        status, rules = proxy.api("GET", "/rewrite")
        assert [(r["name"], r["source"]) for r in rules] == [("legacy", "config"),
                                                            ("from-plugin", "plugin tests.plugins.rewrite")]
        assert "rewrite rule 'broken-from-plugin' refused" in proxy.output()
    finally:
        proxy.stop()


def test_reload_swaps_the_rules_and_a_bad_rule_is_refused_naming_it(start_proxy, tables, tmp_path):
    proxy = start_proxy(rewrite=RULES[:1])
    assert proxy.query("select name from rw_legacy") == [("new",)]
    proxy.sections["rewrite"] = [{"name": "legacy-back", "match": r"\bfrom rw_new\b", "replace": "from rw_legacy"}]
    proxy.write_config()
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while proxy.query("select name from rw_new") != [("legacy",)]:
        assert time.monotonic() < deadline, proxy.output()
        time.sleep(0.05)
    assert proxy.query("select name from rw_legacy") == [("legacy",)]  # (the old rule is gone)
    assert [r["name"] for r in proxy.api("GET", "/rewrite")[1]] == ["legacy-back"]

    bad = tmp_path / "bad.toml"
    bad.write_text('[[nodes]]\nname = "p"\n[[rewrite]]\nname = "broken"\nmatch = "(unclosed"\nreplace = "x"\n'
                   '[[rewrite]]\nname = "groups"\nmatch = "a(b)"\nreplace = "\\\\2"\n')
    out = subprocess.run([sys.executable, "-m", "helios_proxy", "check-config", "-c", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "rewrite[0] ('broken'): match: bad regular expression" in out.stderr
    assert "rewrite[1] ('groups'): replace: invalid group reference 2" in out.stderr


def test_a_rule_rewrites_the_sql_never_the_literals_it_carries_unless_told(start_proxy, tables):
    tables.cursor().execute("DROP TABLE IF EXISTS rw_notes; CREATE TABLE rw_notes (body text)")
    proxy = start_proxy(rewrite=[
        {"name": "legacy", "match": r"\bfrom rw_legacy\b", "replace": "from rw_new"},
        {"name": "shout", "match": "hush", "replace": "HUSH", "in_literals": True}])
    data = ["moved from rw_legacy", "é from rw_legacy", "dollar from rw_legacy"]
    proxy.query("insert into rw_notes values ('moved from rw_legacy'), (E'\\u00e9 from rw_legacy'), "
                "($q$dollar from rw_legacy$q$)")
    cur = tables.cursor()
    cur.execute("select body from rw_notes order by body")
    assert sorted(r[0] for r in cur.fetchall()) == sorted(data)  # stored as the client wrote them
    assert proxy.query("select name, 'from rw_legacy' from rw_legacy where id = 1") == [("new", "from rw_legacy")]
    assert proxy.query("select 'hush'") == [("HUSH",)]  # (in_literals: that rule changes data too)
    assert rule_hits(proxy)["legacy"][0] == 1  # (only the query whose SQL it changed)
