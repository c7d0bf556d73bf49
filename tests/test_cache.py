"""The query cache ([cache], cache/) on a real primary, with real clients: hits in both protocols,
never a stale, foreign or uncacheable answer, invalidation by writes through the proxy, straight
on PostgreSQL (logical slot) and through another proxy (Redis), and a randomized differential test
against PostgreSQL itself."""
import re
import threading
import time
import urllib.request

import psycopg
import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.fix_proxy import ProxyProcess
from tests.fix_redis import redis_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tables(cluster):
    cluster.sql("""
        DROP TABLE IF EXISTS cache_kv, cache_log CASCADE; DROP SCHEMA IF EXISTS cache_s1, cache_s2 CASCADE;
        CREATE TABLE cache_kv (k int PRIMARY KEY, v text);
        INSERT INTO cache_kv SELECT g, 'v' || g FROM generate_series(1, 200) g;
        CREATE TABLE cache_log (id serial PRIMARY KEY, k int, at timestamptz DEFAULT now());
        CREATE SCHEMA cache_s1; CREATE SCHEMA cache_s2;
        CREATE TABLE cache_s1.t (x text); INSERT INTO cache_s1.t VALUES ('one');
        CREATE TABLE cache_s2.t (x text); INSERT INTO cache_s2.t VALUES ('two');
        CREATE OR REPLACE VIEW cache_kv_view AS SELECT k, upper(v) AS v FROM cache_kv;
        CREATE OR REPLACE FUNCTION cache_slow(int) RETURNS int IMMUTABLE LANGUAGE plpgsql
            AS $$ BEGIN PERFORM pg_sleep(0.6); RETURN $1; END $$;
        DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cache_limited') THEN
            CREATE ROLE cache_limited LOGIN; END IF; END $$;
        REVOKE ALL ON cache_kv FROM cache_limited;
        GRANT USAGE ON SCHEMA cache_s1, cache_s2 TO cache_limited;
    """)


def cache_proxy(cluster, workdir, **cache):
    return ProxyProcess(workdir, cluster, pool={"mode": "transaction", "max_size": 10},
                        cache={"enabled": True, **cache}).start()


@pytest.fixture(scope="module")
def cached(cluster, tables, tmp_path_factory):
    """A transaction-pooling proxy with the cache, invalidated by writes through it."""
    p = cache_proxy(cluster, str(tmp_path_factory.mktemp("cache")))
    yield p
    p.stop()


def stats(proxy):
    return proxy.get("/cache")


def one(proxy_or_port, sql, params=None, **kw):
    port = proxy_or_port if isinstance(proxy_or_port, int) else proxy_or_port.port
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=kw.pop("user", "postgres"), dbname="postgres",
                            connect_timeout=10, **kw)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def hits_after(proxy, fn, field="hits"):
    before = stats(proxy)[field]
    fn()
    return stats(proxy)[field] - before


def test_a_repeated_read_is_answered_by_the_proxy_in_both_protocols(cached, direct):
    sql = "select k, v from cache_kv where k = 3"
    assert one(cached, sql) == [(3, "v3")]
    assert hits_after(cached, lambda: one(cached, sql)) == 1
    with psycopg.connect(cached.dsn(), autocommit=True) as conn:
        for prepare in (False, True):
            first = conn.execute("select k, v from cache_kv where k = %s", (4,), prepare=prepare).fetchall()
            n = hits_after(cached, lambda: conn.execute("select k, v from cache_kv where k = %s", (4,),
                                                        prepare=prepare).fetchall())
            assert first == [(4, "v4")] and n == 1, prepare
        # the answer a hit gives is the server's, byte for byte: types, column names, NULLs
        conn.execute("select k, v, null::int as n, 1.5::numeric as x from cache_kv where k = 5").fetchall()
        cur = conn.execute("select k, v, null::int as n, 1.5::numeric as x from cache_kv where k = 5")
        assert [c.name for c in cur.description] == ["k", "v", "n", "x"]
        assert cur.fetchall() == [(5, "v5", None, __import__("decimal").Decimal("1.5"))]
    direct.cursor().execute("select 1")  # (the primary is still there)


def test_spellings_of_one_query_share_an_entry_but_aliases_and_literal_kinds_do_not(cached):
    one(cached, "select v from cache_kv where k = 12")
    assert hits_after(cached, lambda: one(cached, "SELECT v  FROM cache_kv\n WHERE k=12 -- again"),
                      "l3_hits") == 1
    with psycopg.connect(cached.dsn(), autocommit=True) as conn:  # the literal as an int4 parameter
        assert hits_after(cached, lambda: conn.execute("select v from cache_kv where k = $1::int4".replace(
            "$1::int4", "%s::int4"), (12,), prepare=False).fetchall()) in (0, 1)  # (a cast: its own shape)
    # pglast's fingerprint alone would give these one entry: the key must not
    for _ in range(2):
        assert psycopg2_columns(cached, "select 1 as a") == ["a"]
        assert psycopg2_columns(cached, "select 1 as b") == ["b"]
        assert one(cached, "select '1'") == [("1",)] and one(cached, "select 1") == [(1,)]
        assert one(cached, "select v from cache_kv where k = -12") == []
        assert one(cached, "select v from cache_kv where k in (1, 2) order by k") == [("v1",), ("v2",)]
        assert one(cached, "select v from cache_kv where k in (2, 3) order by k") == [("v2",), ("v3",)]


def psycopg2_columns(proxy, sql):
    conn = proxy.connect()
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(sql)
        cur.fetchall()
        return [d.name for d in cur.description]
    finally:
        conn.close()


def test_a_write_through_the_proxy_is_seen_by_the_next_read(cached):
    read = "select v from cache_kv where k = 20"
    one(cached, read), one(cached, read)
    one(cached, "update cache_kv set v = 'w20' where k = 20")
    assert one(cached, read) == [("w20",)]
    one(cached, "select v from cache_kv_view where k = 20")  # a view: invalidated by its table
    one(cached, "update cache_kv set v = 'x20' where k = 20")
    assert one(cached, "select v from cache_kv_view where k = 20") == [("X20",)]
    with psycopg.connect(cached.dsn(), autocommit=True) as conn:
        q = "select v from cache_kv where k = %s"
        conn.execute(q, (21,)).fetchall(), conn.execute(q, (21,)).fetchall()
        conn.execute("delete from cache_kv where k = %s", (21,))
        assert conn.execute(q, (21,)).fetchall() == []
        conn.execute("insert into cache_kv values (%s, 'back')", (21,))
        assert conn.execute(q, (21,)).fetchall() == [("back",)]
    one(cached, "select count(*) from cache_kv")
    one(cached, "truncate cache_log")  # (another table: no effect on cache_kv's entries)
    one(cached, "alter table cache_kv add column extra int")  # DDL: the whole database
    try:
        assert psycopg2_columns(cached, "select * from cache_kv where k = 20") == ["k", "v", "extra"]
    finally:
        one(cached, "alter table cache_kv drop column extra")
    assert psycopg2_columns(cached, "select * from cache_kv where k = 20") == ["k", "v"]


def test_a_read_in_flight_across_a_write_is_not_stored(cached):
    """The read's snapshot predates a write that commits before its answer arrives: storing that
    answer would serve the old row after the write. A counter per table forbids it."""
    read = "select v from cache_kv where k = 30 and cache_slow(k) = k"  # (slow per row: after its snapshot)
    out = {}
    reader = threading.Thread(target=lambda: out.setdefault("v", one(cached, read)))
    reader.start()
    time.sleep(0.25)  # the read waits in cache_slow() with its snapshot taken
    one(cached, "update cache_kv set v = 'during' where k = 30")
    reader.join()
    assert out["v"] == [("v30",)]  # (read committed: its snapshot had the old row)
    assert one(cached, read) == [("during",)]
    assert stats(cached)["stale_fills"] >= 1


def test_a_cached_row_never_reaches_a_user_without_the_privilege(cached):
    read = "select v from cache_kv where k = 40"
    one(cached, read), one(cached, read)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        one(cached, read, user="cache_limited")
    conn = cached.connect()
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("set role cache_limited")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(read)
    finally:
        conn.close()


def test_search_path_and_result_settings_are_part_of_the_key(cached):
    got = []
    for path in ("cache_s1", "cache_s2", "cache_s1", "cache_s2"):
        got.append(one(cached, "select x from t", options=f"-c search_path={path}")[0][0])
    assert got == ["one", "two", "one", "two"]
    conn = cached.connect()
    conn.autocommit = True
    try:
        cur = conn.cursor()
        seen = []
        for path in ("cache_s2", "cache_s1", "cache_s2"):
            cur.execute(f"set search_path = {path}")
            cur.execute("select x from t")
            seen.append(cur.fetchone()[0])
        assert seen == ["two", "one", "two"]
        zones = []
        for zone in ("UTC", "Asia/Tokyo", "UTC"):
            cur.execute(f"set timezone = '{zone}'")
            cur.execute("select '2024-01-01 00:00:00+00'::timestamptz::text")
            zones.append(cur.fetchone()[0])
        assert zones == ["2024-01-01 00:00:00+00", "2024-01-01 09:00:00+09", "2024-01-01 00:00:00+00"]
    finally:
        conn.close()


def test_what_must_never_be_cached_is_not(cached, direct):
    assert one(cached, "select random()") != one(cached, "select random()")
    a = one(cached, "select now()::text")
    time.sleep(0.01)
    assert one(cached, "select now()::text") != a  # stable: only with a TTL
    a = one(cached, "/*+ cache_ttl=30 */ select now()::text")
    time.sleep(0.01)
    assert one(cached, "/*+ cache_ttl=30 */ select now()::text") == a  # ... which the hint gives
    with pytest.raises(psycopg2.errors.InvalidParameterValue):
        one(cached, "/*+ cache_ttl=soon */ select 1")
    one(cached, "/*+ cache=off */ select v from cache_kv where k = 50")
    assert hits_after(cached, lambda: one(cached, "/*+ cache=off */ select v from cache_kv where k = 50")) == 0
    for sql in ("select v from cache_kv where k = 51 for update", "select count(*) from pg_stat_activity",
                "select relname from pg_class where relname = 'cache_kv'"):
        one(cached, sql)
        assert hits_after(cached, lambda: one(cached, sql)) == 0, sql
    conn = cached.connect()  # a temporary table pins the session; its reads are its own
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("create temp table cache_kv (k int, v text)")
        cur.execute("insert into cache_kv values (52, 'temp')")
        cur.execute("select v from cache_kv where k = 52")
        assert cur.fetchall() == [("temp",)]
    finally:
        conn.close()
    assert one(cached, "select v from cache_kv where k = 52") == [("v52",)]


def test_a_transaction_reads_its_own_write_and_a_rollback_leaves_the_cache_clean(cached):
    read = "select v from cache_kv where k = 60"
    one(cached, read), one(cached, read)
    conn = cached.connect()
    try:
        cur = conn.cursor()
        cur.execute(read)
        cur.execute("update cache_kv set v = 'tx60' where k = 60")
        cur.execute(read)
        assert cur.fetchall() == [("tx60",)]
        other = one(cached, read)  # another client meanwhile: the committed row
        assert other == [("v60",)]
        conn.rollback()
    finally:
        conn.close()
    assert one(cached, read) == [("v60",)]
    conn = cached.connect()
    try:
        cur = conn.cursor()
        cur.execute("update cache_kv set v = 'c60' where k = 60")
        assert one(cached, read) == [("v60",)]  # not committed yet
        conn.commit()
    finally:
        conn.close()
    assert one(cached, read) == [("c60",)]


def test_reads_in_a_read_committed_transaction_that_has_not_written_are_served(cached):
    q = "select v from cache_kv where k = %s"
    with psycopg.connect(cached.dsn()) as conn:  # (not autocommit: psycopg sends BEGIN first)
        conn.execute(q, (61,)).fetchall()
        conn.commit()
        assert hits_after(cached, lambda: conn.execute(q, (61,)).fetchall()) == 1
        conn.execute("update cache_kv set v = 'mine' where k = 62")
        assert hits_after(cached, lambda: conn.execute(q, (61,)).fetchall()) == 0  # it wrote: its own view
        conn.rollback()
        conn.execute("set local search_path = cache_s2")  # this transaction's own settings
        assert conn.execute("select x from t").fetchall() == [("two",)]
        conn.rollback()
        conn.execute("set search_path = cache_s1")
        conn.commit()
        assert conn.execute("select x from t").fetchall() == [("one",)]
        conn.commit()
        conn.execute("reset search_path")
        conn.commit()
    conn = cached.connect()  # repeatable read: the transaction's snapshot, never a newer cached row
    try:
        conn.set_session(isolation_level="REPEATABLE READ")
        cur = conn.cursor()
        cur.execute("select v from cache_kv where k = 63")
        assert hits_after(cached, lambda: cur.execute("select v from cache_kv where k = 63")) == 0
    finally:
        conn.close()


def test_session_pooling_follows_the_sessions_own_settings_and_temporary_tables(cluster, tables, tmp_path):
    p = ProxyProcess(str(tmp_path), cluster, pool={"mode": "session", "max_size": 10},
                     cache={"enabled": True}).start()
    try:
        a = p.connect(options="-c search_path=cache_s1")
        b = p.connect(options="-c search_path=cache_s2")
        a.autocommit = b.autocommit = True
        ca, cb = a.cursor(), b.cursor()
        for _ in range(2):
            ca.execute("select x from t"), cb.execute("select x from t")
            assert (ca.fetchone(), cb.fetchone()) == (("one",), ("two",))
        ca.execute("set timezone = 'UTC'")  # a setting unrelated to t: its startup search_path stays
        ca.execute("select x from t")
        assert ca.fetchone() == ("one",)
        ca.execute("set search_path = cache_s2")
        ca.execute("select x from t")
        assert ca.fetchone() == ("two",)
        assert hits_after(p, lambda: (ca.execute("select x from t"), ca.fetchone())) == 1
        ca.execute("reset search_path")  # back to its startup option
        ca.execute("select x from t")
        assert ca.fetchone() == ("one",)
        cb.execute("create temp table cache_s2_shadow (x text)")  # from here on its own
        cb.execute("select x from t")
        assert hits_after(p, lambda: (cb.execute("select x from t"), cb.fetchone())) == 0
        a.close(), b.close()
    finally:
        p.stop()


def test_with_reads_split_to_standbys_only_the_primarys_answers_are_stored(cluster, tables, tmp_path):
    """A standby that has not replayed a write would give the row as it was before: stored, that
    answer would be served after the standby caught up, and after every other check passed."""
    from tests.test_routing import nodes, wait_standby_reads
    p = ProxyProcess(str(tmp_path), cluster, pool={"mode": "transaction"}, nodes=nodes(cluster),
                     cache={"enabled": True}).start()
    standbys = cluster.ports[1:]
    try:
        wait_standby_reads(p)
        read = "select v from cache_kv where k = 96"
        one(p, read), one(p, read)
        for port in standbys:
            cluster.sql("SELECT pg_wal_replay_pause()", port=port)
        one(p, "update cache_kv set v = 'fresh96' where k = 96")
        assert one(p, read) == [("fresh96",)]  # (the miss went to the primary)
        assert hits_after(p, lambda: one(p, read)) == 1
    finally:
        for port in standbys:
            cluster.sql("SELECT pg_wal_replay_resume()", port=port)
        p.stop()
    cluster.wait_replayed()


def test_per_table_rules_turn_the_cache_off_shorten_its_ttl_or_allow_now(cluster, tables, tmp_path):
    p = cache_proxy(cluster, str(tmp_path), rules=[
        {"table": "cache_s1.t", "cache": False},
        {"table": "cache_kv*", "ttl_s": 1.0, "stable_functions": True}])
    try:
        never = "select x from cache_s1.t"
        one(p, never)
        assert hits_after(p, lambda: one(p, never)) == 0
        stamped = "select v, now()::text from cache_kv where k = 97"
        first = one(p, stamped)
        assert one(p, stamped) == first  # now() allowed by the rule, for its TTL...
        time.sleep(1.3)
        assert one(p, stamped) != first  # ... of one second
    finally:
        p.stop()


def test_admin_api_flush_and_invalidate(cached):
    one(cached, "select v from cache_kv where k = 70")
    body = stats(cached)
    assert {"hits", "misses", "l1_hits", "l2_hits", "l3_hits", "invalidations", "entries", "bytes",
            "classes"} <= set(body)
    assert body["entries"] >= 1 and body["classes"]["point"] >= 1
    assert any(f["class"] == "point" for f in body["fingerprints"])
    assert cached.api("POST", "/cache/flush", token=None)[0] == 401
    status, answer = cached.api("POST", "/cache/flush")
    assert status == 200 and answer["flushed"] >= 1 and stats(cached)["entries"] == 0
    one(cached, "select v from cache_kv where k = 70")
    status, answer = cached.api("POST", "/cache/invalidate", {"database": "postgres", "tables": ["cache_kv"]})
    assert status == 200 and answer["invalidated"] >= 1
    assert cached.api("POST", "/cache/invalidate", {"tables": "cache_kv"})[0] == 400
    one(cached, "select v from cache_kv where k = 71"), one(cached, "select v from cache_kv where k = 71")
    with urllib.request.urlopen(f"http://127.0.0.1:{cached.admin_port}/metrics/prometheus", timeout=30) as r:
        text = r.read().decode()
    hits = re.search(r'^helios_cache_lookups_total\{result="l1_hit"\} (\S+)', text, re.M)
    assert hits and float(hits.group(1)) >= 1 and "helios_cache_entries " in text
    assert cached.api("GET", "/metrics")[1]["cache"]["hits"] >= 1  # (the status page's hit rate)


def test_writes_made_straight_on_postgresql_invalidate_with_the_logical_slot(cluster, tables, tmp_path, direct):
    p = cache_proxy(cluster, str(tmp_path), invalidation="logical", logical_poll_s=0.1)
    try:
        read = "select v from cache_kv where k = 80"
        deadline = time.monotonic() + 20
        while stats(p)["logical"].get("postgres", {}).get("ready") is not True:  # (made at the first read)
            one(p, read)
            assert time.monotonic() < deadline, stats(p)
            time.sleep(0.1)
        slot = stats(p)["logical"]["postgres"]["slot"]
        one(p, read)
        assert hits_after(p, lambda: one(p, read)) == 1
        direct.cursor().execute("update cache_kv set v = 'direct80' where k = 80")
        t0 = time.monotonic()
        while one(p, read) != [("direct80",)]:
            assert time.monotonic() - t0 < 2.0, "a write straight on PostgreSQL was served stale for 2 s"
            time.sleep(0.02)
        cur = direct.cursor()
        cur.execute("select temporary from pg_replication_slots where slot_name = %s", (slot,))
        assert cur.fetchall() == [(True,)]
    finally:
        p.stop()
    cur.execute("select count(*) from pg_replication_slots where slot_name = %s", (slot,))
    assert cur.fetchone()[0] == 0  # the proxy is gone: so is its slot (and the WAL it held)


def test_two_proxies_share_the_redis_tier_and_hear_each_others_writes(cluster, tables, tmp_path, redis_server):
    a = cache_proxy(cluster, str(tmp_path), redis_url=redis_server.url)
    b = cache_proxy(cluster, str(tmp_path), redis_url=redis_server.url)
    try:
        read = "select v from cache_kv where k = 90"
        wait_subscribed(a), wait_subscribed(b)
        one(a, read)
        assert hits_after(b, lambda: one(b, read), "l2_hits") == 1
        assert hits_after(b, lambda: one(b, read), "l1_hits") == 1
        one(a, "update cache_kv set v = 'a90' where k = 90")
        t0 = time.monotonic()
        while one(b, read) != [("a90",)]:
            assert time.monotonic() - t0 < 1.0, "proxy B served proxy A's write stale for 1 s"
            time.sleep(0.02)
        assert one(a, read) == [("a90",)]
        redis_server.stop()  # Redis goes away: both go on, correct, without hits
        one(b, "update cache_kv set v = 'b90' where k = 90")
        assert one(a, read) == [("b90",)] and one(b, read) == [("b90",)]
        assert stats(a)["redis"]["subscribed"] is False
        redis_server.start()  # ... and come back by themselves
        wait_subscribed(a), wait_subscribed(b)
        one(a, read)
        assert hits_after(a, lambda: one(a, read)) == 1
    finally:
        a.stop()
        b.stop()


def wait_subscribed(proxy, timeout=15):
    deadline = time.monotonic() + timeout
    while not stats(proxy)["redis"]["subscribed"]:
        assert time.monotonic() < deadline, stats(proxy)
        time.sleep(0.1)


# --- a randomized differential test: the cache against PostgreSQL itself -------------------------
KEYS = st.integers(min_value=1, max_value=12)
STEP = st.one_of(
    st.tuples(st.just("read"), KEYS), st.tuples(st.just("read_ext"), KEYS), st.tuples(st.just("count"), KEYS),
    st.tuples(st.just("range"), KEYS), st.tuples(st.just("join"), KEYS),
    st.tuples(st.just("update"), KEYS), st.tuples(st.just("insert"), KEYS), st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("tx_update"), KEYS), st.tuples(st.just("tx_rollback"), KEYS))
READS = {"read": "select v from cache_diff where k = {k}", "count": "select count(*) from cache_diff",
         "range": "select k, v from cache_diff where k >= {k} order by k",
         "join": "select d.k, o.n from cache_diff d join cache_other o on o.k = d.k where d.k <= {k} order by 1"}
WRITES = {"update": "update cache_diff set v = v || 'u' where k = {k}",
          "insert": "insert into cache_diff values ({k}, 'i') on conflict (k) do update set v = 'c'",
          "delete": "delete from cache_diff where k = {k}"}


@pytest.fixture(scope="module")
def diff_tables(cluster):
    cluster.sql("DROP TABLE IF EXISTS cache_diff, cache_other; CREATE TABLE cache_diff (k int PRIMARY KEY, v text);"
                "CREATE TABLE cache_other (k int PRIMARY KEY, n int);"
                "INSERT INTO cache_other SELECT g, g * 10 FROM generate_series(1, 12) g")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(STEP, min_size=50, max_size=150))
def test_differential_reads_and_writes_through_the_cache_equal_postgresql(cached, diff_tables, cluster, steps):
    """Thousands of steps over the examples: every read through the cache (simple and extended
    protocol, several connections) equals the same read straight on the primary at that moment."""
    direct = psycopg2.connect(host="127.0.0.1", port=cluster.primary_port, user="postgres", dbname="postgres")
    direct.autocommit = True
    clients = [cached.connect() for _ in range(2)]
    ext = psycopg.connect(cached.dsn(), autocommit=True)
    try:
        dcur = direct.cursor()
        for c in clients:
            c.autocommit = True
        clients[0].cursor().execute(  # (through the proxy: this one hears only of writes through it)
            "delete from cache_diff; insert into cache_diff select g, 'v' || g from generate_series(1, 8) g")
        for i, (op, k) in enumerate(steps):
            cur = clients[i % 2].cursor()
            if op in READS:
                sql = READS[op].format(k=k)
                cur.execute(sql)
                got = cur.fetchall()
                dcur.execute(sql)
                assert got == dcur.fetchall(), (i, op, k)
            elif op == "read_ext":
                got = ext.execute("select v from cache_diff where k = %s", (k,)).fetchall()
                dcur.execute("select v from cache_diff where k = %s", (k,))
                assert got == [tuple(r) for r in dcur.fetchall()], (i, op, k)
            elif op in WRITES:
                cur.execute(WRITES[op].format(k=k))
            else:  # a transaction through the proxy: a write, a read of it, then commit or rollback
                conn = clients[i % 2]
                conn.autocommit = False
                cur = conn.cursor()
                cur.execute(WRITES["update"].format(k=k))
                cur.execute(READS["read"].format(k=k))
                inside = cur.fetchall()
                (conn.rollback if op == "tx_rollback" else conn.commit)()
                conn.autocommit = True
                dcur.execute(READS["read"].format(k=k))
                after = dcur.fetchall()
                assert (after != inside) == (op == "tx_rollback" and bool(inside)), (i, op, k)
    finally:
        for c in clients:
            c.close()
        ext.close()
        direct.close()


def test_a_failover_empties_the_cache(start_proxy, ha_cluster):
    """What the old primary answered may hold writes an asynchronous standby never got: after a
    new primary is confirmed, nothing cached before is served."""
    from tests.test_ha import start_ha_proxy
    from tests.test_replay import kill_primary, new_primary
    ha_cluster.sql("INSERT INTO ha_rows (id) VALUES (7)")
    ha_cluster.wait_replayed()
    proxy = start_ha_proxy(start_proxy, ha_cluster, cache={"enabled": True})
    read = "select id from ha_rows where id = 7"
    one(proxy, read)
    assert hits_after(proxy, lambda: one(proxy, read)) == 1
    kill_primary(ha_cluster)
    new_primary(proxy)
    deadline = time.monotonic() + 30
    while True:
        try:
            assert one(proxy, read) == [(7,)]
            break
        except psycopg2.OperationalError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    body = stats(proxy)
    assert body["flushes"] >= 1 and body["entries"] <= 1


@pytest.mark.parametrize("change", [
    "select set_config('search_path', 'cache_s2', false)",
    "select pg_catalog.set_config('search_path', 'cache_s2', false), 1",
    "do $$ begin perform set_config('search_path', 'cache_s2', false); end $$",
    "set session search_path to cache_s2",
    "select public.cache_path_to('cache_s2')",  # a function the proxy cannot see into
])
def test_session_pooling_key_follows_set_config_and_do_blocks(cluster, tables, tmp_path, change, direct):
    direct.cursor().execute("create or replace function cache_path_to(p text) returns text language plpgsql as "
                            "$$ begin return set_config('search_path', p, false); end $$")
    p = ProxyProcess(str(tmp_path), cluster, pool={"mode": "session", "max_size": 10},
                     cache={"enabled": True}).start()
    try:
        conn = p.connect(options="-c search_path=cache_s1")
        conn.autocommit = True
        cur = conn.cursor()
        for _ in range(2):  # cached under its startup search_path
            cur.execute("select x from t")
            assert cur.fetchone() == ("one",)
        cur.execute(change)
        cur.execute("select x from t")
        assert cur.fetchone() == ("two",)
        conn.close()
    finally:
        p.stop()


def test_writes_that_reach_other_tables_invalidate_them(cluster, tables, tmp_path):
    cluster.sql("""
        DROP TABLE IF EXISTS cr_child, cr_parent, cr_audit, cr_src, cr_rule_src, cr_rule_dst CASCADE;
        CREATE TABLE cr_parent (id int PRIMARY KEY);
        CREATE TABLE cr_child (id int PRIMARY KEY, parent int REFERENCES cr_parent ON DELETE CASCADE);
        INSERT INTO cr_parent VALUES (1), (2); INSERT INTO cr_child VALUES (10, 1), (20, 2);
        CREATE TABLE cr_src (x int); CREATE TABLE cr_audit (n int); INSERT INTO cr_audit VALUES (0);
        CREATE OR REPLACE FUNCTION cr_count() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN UPDATE cr_audit SET n = n + 1; RETURN NULL; END $$;
        CREATE TRIGGER cr_count AFTER INSERT ON cr_src FOR EACH ROW EXECUTE FUNCTION cr_count();
        CREATE TABLE cr_rule_src (x int); CREATE TABLE cr_rule_dst (x int);
        CREATE RULE cr_copy AS ON INSERT TO cr_rule_src DO ALSO INSERT INTO cr_rule_dst VALUES (NEW.x);
        CREATE OR REPLACE VIEW cr_view AS SELECT id, parent FROM cr_child;
    """)
    p = cache_proxy(cluster, str(tmp_path))
    try:
        def read_twice(sql):  # (a read of a fresh proxy loads the catalog first) then one from the cache
            one(p, sql), one(p, sql)
            assert hits_after(p, lambda: one(p, sql)) == 1, sql
            return one(p, sql)

        assert read_twice("select count(*) from cr_child") == [(2,)]
        one(p, "delete from cr_parent where id = 1")  # ON DELETE CASCADE: a row of cr_child goes
        assert one(p, "select count(*) from cr_child") == [(1,)]
        assert read_twice("select n from cr_audit") == [(0,)]
        one(p, "insert into cr_src values (1)")  # the trigger updates cr_audit
        assert one(p, "select n from cr_audit") == [(1,)]
        assert read_twice("select count(*) from cr_rule_dst") == [(0,)]
        one(p, "insert into cr_rule_src values (7)")  # the rule writes cr_rule_dst too
        assert one(p, "select count(*) from cr_rule_dst") == [(1,)]
        assert read_twice("select count(*) from cr_child where parent = 2") == [(1,)]
        one(p, "delete from cr_view where parent = 2")  # through an updatable view
        assert one(p, "select count(*) from cr_child where parent = 2") == [(0,)]
    finally:
        p.stop()
