"""Query analytics ([analytics], analytics/) end to end: one fingerprint per shape across literals,
parameters and both protocols, its numbers checked against pg_stat_statements on the same
workload; errors, latency quantiles, intents; the slow-query log without literals; N+1 patterns."""
import json
import time

import psycopg
import psycopg2
import pytest


def by_query(proxy, words):
    status, rows = proxy.api("GET", "/analytics/queries?limit=1000")
    assert status == 200
    return [r for r in rows if words in r["query"].lower()]


@pytest.fixture
def analytics_proxy(start_proxy, tmp_path):
    slow_log = str(tmp_path / "slow.jsonl")
    proxy = start_proxy(pool={"mode": "transaction"}, analytics={
        "enabled": True, "slow_query_ms": 150, "slow_log": slow_log, "n_plus_one_threshold": 10})
    proxy.slow_log = slow_log
    return proxy


def test_one_shape_is_one_fingerprint_and_its_numbers_agree_with_pg_stat_statements(analytics_proxy, direct):
    proxy = analytics_proxy
    cur = direct.cursor()
    cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    cur.execute("DROP TABLE IF EXISTS an_kv; CREATE TABLE an_kv (k int PRIMARY KEY, v text)")
    cur.execute("INSERT INTO an_kv SELECT g, 'v' || g FROM generate_series(1, 100) g")
    cur.execute("SELECT pg_stat_statements_reset()")
    conn = proxy.connect()
    conn.autocommit = True
    c2 = conn.cursor()
    for k in range(60):  # psycopg2: literals in the text (simple protocol)
        c2.execute("select v from an_kv where k = %s", (k % 120,))
    with psycopg.connect(proxy.dsn(), autocommit=True) as c3:  # psycopg 3: parameters, unnamed then
        for k in range(40):                                       # (from the 5th) a named statement
            c3.execute("select v from an_kv where k = %s", (k,)).fetchall()
    for _ in range(3):
        with pytest.raises(psycopg2.errors.UndefinedTable):
            c2.execute("select * from an_missing_table")
    c2.execute("select pg_sleep(0.2), 'secret-literal-42'")
    c2.execute("update an_kv set v = v where k < 5")
    conn.close()

    [shape] = by_query(proxy, "from an_kv where k =")
    assert shape["query"] == "select v from an_kv where k = $1" and shape["intent"] == "read"
    cur.execute("SELECT sum(calls), sum(rows), sum(total_exec_time) FROM pg_stat_statements "
                "WHERE query = 'select v from an_kv where k = $1'")
    calls, rows, server_ms = cur.fetchone()
    assert shape["calls"] == calls == 100 and shape["rows"] == rows == 98  # (k = 0: no row, twice)
    assert shape["total_ms"] >= server_ms and shape["p50_ms"] <= shape["p95_ms"] <= shape["p99_ms"] <= shape["max_ms"]
    assert shape["users"] == {"postgres": 100} and shape["databases"] == {"postgres": 100}

    [missing] = by_query(proxy, "an_missing_table")
    assert missing["errors"] == 3 and missing["errors_by_sqlstate"] == {"42P01": 3}
    [sleep] = by_query(proxy, "pg_sleep")
    cur.execute("SELECT mean_exec_time FROM pg_stat_statements WHERE query LIKE 'select pg_sleep%'")
    assert sleep["mean_ms"] >= cur.fetchone()[0] >= 200 and sleep["p99_ms"] >= 195  # (+-1 %)
    assert sleep["query"] == "select pg_sleep($1), $2"
    [update] = by_query(proxy, "update an_kv")
    assert update["intent"] == "write" and update["rows"] == 4

    lines = [json.loads(line) for line in open(proxy.slow_log)]
    assert [e["query"] for e in lines] == ["select pg_sleep($1), $2"]
    assert lines[0]["duration_ms"] >= 200 and lines[0]["user"] == "postgres" and lines[0]["node"] == "primary"
    assert "secret-literal" not in open(proxy.slow_log).read()
    status, recent = proxy.api("GET", "/analytics/slow")
    assert status == 200 and recent[0]["fingerprint"] == sleep["fingerprint"]
    assert "secret-literal" not in json.dumps(recent)

    status, top = proxy.api("GET", "/analytics/queries?sort=calls&limit=1")
    assert top[0]["fingerprint"] == shape["fingerprint"]
    assert proxy.api("GET", "/analytics/queries?sort=nonsense")[0] == 400
    import urllib.request
    request = urllib.request.Request(f"http://127.0.0.1:{proxy.admin_port}/metrics/prometheus",
                                     headers={"Authorization": "Bearer test-token"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    assert (f'helios_query_calls_total{{fingerprint="{shape["fingerprint"]}",'
            f'query="select v from an_kv where k = $1"}} 100.0') in text
    assert proxy.api("POST", "/analytics/reset") == (200, {"reset": True})
    assert by_query(proxy, "from an_kv where k =") == []


def test_n_plus_one_queries_in_a_transaction_are_reported_once_with_a_rewrite(analytics_proxy, direct):
    proxy = analytics_proxy
    direct.cursor().execute("DROP TABLE IF EXISTS an_parent, an_child; CREATE TABLE an_parent (id int); "
                            "CREATE TABLE an_child (parent_id int, name text); "
                            "INSERT INTO an_parent SELECT generate_series(1, 12)")
    conn = proxy.connect()
    cur = conn.cursor()
    for _ in range(2):  # (the same pattern twice: one pattern, two occurrences, one log line)
        cur.execute("select id from an_parent")
        for (parent,) in cur.fetchall():
            cur.execute("select name from an_child where parent_id = %s", (parent,))
        conn.commit()
    conn.autocommit = True
    for k in range(12):  # outside a transaction, further apart than n_plus_one_window_ms: no pattern
        cur.execute("select id from an_parent where id = %s", (k,))
        time.sleep(0.12)
    conn.close()
    status, patterns = proxy.api("GET", "/analytics/n_plus_one")
    assert status == 200 and len(patterns) == 1, patterns
    [p] = patterns
    assert p["query"] == "select name from an_child where parent_id = $1"
    assert p["preceding_query"] == "select id from an_parent"
    assert p["count"] == 12 and p["occurrences"] == 2
    assert p["suggestion"].startswith("select name from an_child where parent_id = ANY($1)")
    assert proxy.output().count("N+1 queries") == 1


def test_analytics_off_answers_404_and_costs_nothing(start_proxy):
    proxy = start_proxy()
    assert proxy.api("GET", "/analytics/queries")[0] == 404
    assert proxy.api("GET", "/analytics") == (200, {"enabled": False})
    assert proxy.query("select 1") == [(1,)]


def test_workers_numbers_are_added_up_exactly(cluster, tmp_path):
    from tests.fix_proxy import ProxyProcess
    from tests.test_workers import wait_workers
    proxy = ProxyProcess(str(tmp_path), cluster, server={"workers": 2},
                         analytics={"enabled": True, "slow_query_ms": 0}).start()
    try:
        wait_workers(proxy)
        for i in range(12):  # (new connections: the kernel spreads them over both workers)
            proxy.query(f"select {i} as worker_probe")
        status, rows = proxy.api("GET", "/analytics/queries")
        [shape] = [r for r in rows if "worker_probe" in r["query"]]
        assert status == 200 and shape["calls"] == 12 and shape["p99_ms"] is not None
        assert proxy.api("GET", "/analytics")[1]["calls"] >= 12
        assert proxy.api("POST", "/analytics/reset")[0] == 200
        assert not [r for r in proxy.api("GET", "/analytics/queries")[1] if "worker_probe" in r["query"]]
    finally:
        proxy.stop()
