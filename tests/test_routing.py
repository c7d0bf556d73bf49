"""Read/write splitting in transaction pooling: reads to standbys, writes and transactions to the
primary, hints, SET helios.route, read-your-writes, weighted balancing, the classifier's table."""
import collections
import random
import time

import psycopg
import psycopg2
import pytest

from helios_proxy.routing.balancer import Balancer
from helios_proxy.routing.classify import BEGIN_READ_ONLY, READ, WRITE, Classifier
from helios_proxy.routing.hints import parse_hints
from helios_proxy.errors import ProxyError


def nodes(cluster, **weights):
    out = [{"name": "primary", "host": "127.0.0.1", "port": cluster.ports[0], "role": "primary"}]
    for i, port in enumerate(cluster.ports[1:], 1):
        out.append({"name": f"standby{i}", "host": "127.0.0.1", "port": port, "role": "standby",
                    "weight": weights.get(f"standby{i}", 1)})
    return out


def wait_standby_reads(proxy, timeout=15):
    """Until a read goes to a standby: standbys get reads once their lag has been measured."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.query("select pg_is_in_recovery()") == [(True,)]:
            return
        time.sleep(0.05)
    raise AssertionError("no read reached a standby")


@pytest.fixture(scope="module")
def routed(cluster, tmp_path_factory):
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path_factory.mktemp("routing")), cluster, pool={"mode": "transaction"},
                     nodes=nodes(cluster)).start()
    wait_standby_reads(p)
    yield p
    p.stop()


def writes_read_back(cur, table, column, value, n, primary_port):
    """n times: a row inserted into table, then read back at once by its id: (reads that missed
    it, reads a standby answered)."""
    misses, standby_reads = 0, 0
    for _ in range(n):
        cur.execute(f"insert into {table} ({column}) values (%s) returning id", (value,))
        rid = cur.fetchone()[0]
        cur.execute(f"select count(*), inet_server_port() from {table} where id = %s", (rid,))
        found, port = cur.fetchone()
        misses += found != 1
        standby_reads += port != primary_port
    return misses, standby_reads


def ports_of(cur, sql, n):
    seen = collections.Counter()
    for _ in range(n):
        cur.execute(sql)
        seen[cur.fetchone()[0]] += 1
    return seen


def test_reads_spread_over_standbys_writes_on_primary(routed, cluster):
    conn = routed.connect()
    conn.autocommit = True
    cur = conn.cursor()
    seen = ports_of(cur, "select inet_server_port()", 60)
    assert seen[cluster.ports[1]] > 15 and seen[cluster.ports[2]] > 15 and seen[cluster.ports[0]] == 0
    cur.execute("select pg_is_in_recovery()")
    assert cur.fetchone()[0] is True
    cur.execute("create table if not exists routed_t(id serial primary key, v text)")
    cur.execute("insert into routed_t(v) values ('x') returning inet_server_port()")
    assert cur.fetchone()[0] == cluster.ports[0]
    for sql in ("select inet_server_port() from routed_t limit 1 for update",
                "with w as (insert into routed_t(v) values ('cte') returning id) "
                "select inet_server_port() from w",
                "select inet_server_port(), nextval('routed_t_id_seq')"):
        cur.execute(sql)
        assert cur.fetchone()[0] == cluster.ports[0], sql


def test_transactions_on_primary_unless_read_only(routed, cluster):
    conn = routed.connect()
    cur = conn.cursor()
    cur.execute("select inet_server_port()")  # psycopg2 sent BEGIN first: a read-write transaction
    first = cur.fetchone()[0]
    cur.execute("select inet_server_port()")
    assert first == cur.fetchone()[0] == cluster.ports[0]
    conn.commit()
    cluster.wait_replayed()  # else read-your-writes may rightly keep this client's reads on the primary
    conn.set_session(readonly=True)
    cur.execute("select inet_server_port()")
    assert cur.fetchone()[0] in cluster.ports[1:]
    conn.commit()


def test_hints_and_session_override(routed, cluster):
    conn = routed.connect()
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("/*+ route=primary */ select inet_server_port()")
    assert cur.fetchone()[0] == cluster.ports[0]
    cur.execute("/*+ node=standby2 */ select inet_server_port()")
    assert cur.fetchone()[0] == cluster.ports[2]
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="unknown hint"):
        cur.execute("/*+ rout=primary */ select 1")
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="unknown node"):
        cur.execute("/*+ node=nowhere */ select 1")
    cur.execute("set helios.route = primary")
    assert set(ports_of(cur, "select inet_server_port()", 10)) == {cluster.ports[0]}
    cur.execute("set helios.route = auto")
    assert cluster.ports[0] not in ports_of(cur, "select inet_server_port()", 10)


def test_read_your_writes_1000_times_while_reads_reach_standbys(routed, cluster):
    conn = routed.connect()
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("create table if not exists ryw_t(id serial primary key, v int)")
    misses, standby_reads = writes_read_back(cur, "ryw_t", "v", 1, 1000, cluster.ports[0])
    assert misses == 0
    assert standby_reads > 100


def test_prepared_reads_go_to_standbys(routed, cluster):
    with psycopg.connect(routed.dsn(), prepare_threshold=0, autocommit=True) as conn:
        seen = collections.Counter(conn.execute("select inet_server_port() where %s::int > 0", (i,)).fetchone()[0]
                                   for i in range(1, 40))
    assert seen[cluster.ports[0]] == 0 and len(seen) == 2


def test_reads_reach_standbys_after_a_primary_transaction_at_a_wal_segment_start(routed, cluster):
    """After a segment switch (archive_timeout on an idle primary does one), the primary's WAL
    insert position sits past the new segment's page header, where no standby's replay ever
    reaches until something else is written: read-your-writes waited for it, so a client's reads
    stayed on the primary after any transaction there."""
    primary = psycopg.connect(f"host=127.0.0.1 port={cluster.ports[0]} user=postgres dbname=postgres",
                              autocommit=True)
    primary.execute("create table if not exists switch_t(id int)")
    primary.execute("insert into switch_t values (1)")
    primary.execute("select pg_switch_wal()")
    end = primary.execute("select pg_current_wal_lsn()").fetchone()[0]
    for port in cluster.ports[1:]:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as s:
            deadline = time.monotonic() + 15
            while s.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (end,)).fetchone()[0] is not True:
                assert time.monotonic() < deadline, "the standby did not replay the switch"
                time.sleep(0.05)
    primary.close()
    conn = routed.connect()
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("set helios.route = primary")
    cur.execute("select inet_server_port()")
    assert cur.fetchone()[0] == cluster.ports[0]
    cur.execute("set helios.route = auto")
    deadline = time.monotonic() + 5
    while cluster.ports[0] in ports_of(cur, "select inet_server_port()", 1):
        assert time.monotonic() < deadline, "reads stayed on the primary"
        time.sleep(0.05)


def test_helios_commands_through_psycopg3(routed, cluster):
    """psycopg 3 sends a statement through the extended protocol once it prepares it (at once with
    prepare_threshold=0, else after five runs): SET helios.route and SHOW helios.write_lsn, which
    the proxy answers itself, work there as in psql, each execution of a prepared SET takes effect,
    a read it prepared follows SET helios.route = primary (it got 0A000; the read went on to a
    standby), and one it prepared while the route said primary reads from a standby once it says
    auto again (it stayed on the primary)."""
    def port(conn):
        return conn.execute("select inet_server_port()").fetchone()[0]

    def reaches_a_standby(conn):  # (bounded: read-your-writes may hold reads until a standby replays)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if port(conn) != cluster.ports[0]:
                return True
            time.sleep(0.05)
        return False

    with psycopg.connect(routed.dsn(), prepare_threshold=0, autocommit=True) as conn:
        for _ in range(3):
            assert reaches_a_standby(conn)
            conn.execute("set helios.route = primary")
            assert {port(conn) for _ in range(6)} == {cluster.ports[0]}
            conn.execute("set helios.route = auto")
    with psycopg.connect(routed.dsn(), autocommit=True) as conn:  # (prepared at its fifth run: while
        conn.execute("set helios.route = primary")                 # the route says primary)
        assert {port(conn) for _ in range(8)} == {cluster.ports[0]}
        conn.execute("set helios.route = auto")
        assert reaches_a_standby(conn)  # (it follows its own route again)
    with psycopg.connect(routed.dsn(), prepare_threshold=0, autocommit=True) as conn:
        conn.execute("create table if not exists lsn_t(id int)")
        conn.execute("insert into lsn_t values (1)")
        token = conn.execute("show helios.write_lsn").fetchone()[0]
        assert "/" in token
        conn.execute(f"set helios.read_after = '{token}'")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="helios.route"):
            conn.execute("set helios.route = nowhere")
        assert conn.execute("select 1").fetchone() == (1,)


def test_weighted_distribution(start_proxy, cluster):
    proxy = start_proxy(pool={"mode": "transaction"}, routing={"strategy": "weighted"},
                        nodes=nodes(cluster, standby1=1, standby2=3))
    conn = proxy.connect()
    conn.autocommit = True
    seen = ports_of(conn.cursor(), "select inet_server_port()", 200)
    assert seen[cluster.ports[1]] == 50 and seen[cluster.ports[2]] == 150


def test_session_mode_does_not_split(start_proxy, cluster):
    proxy = start_proxy(nodes=nodes(cluster))
    conn = proxy.connect()
    conn.autocommit = True
    assert set(ports_of(conn.cursor(), "select inet_server_port()", 5)) == {cluster.ports[0]}


CLASSIFIED = [
    ("select 1", READ), ("SELECT now(), count(*) FROM t", READ), ("values (1)", READ), ("table t", READ),
    ("show search_path", READ), ("explain select 1", READ), ("explain analyze select 1", READ),
    ("/* comment */ select 1", READ), ("select 1; select 2", READ), ("select pg_is_in_recovery()", READ),
    ("begin read only", BEGIN_READ_ONLY), ("start transaction isolation level serializable, read only",
                                           BEGIN_READ_ONLY),
    ("insert into t values (1)", WRITE), ("update t set a = 1", WRITE), ("delete from t", WRITE),
    ("with x as (insert into t values (1) returning *) select * from x", WRITE),
    ("select * from t for update", WRITE), ("select * from t for share", WRITE),
    ("select nextval('s')", WRITE), ("select pg_advisory_lock(1)", WRITE), ("select set_config('a', 'b', false)",
                                                                           WRITE),
    ("select * into t2 from t", WRITE), ("create temp table x(i int)", WRITE), ("do $$ begin end $$", WRITE),
    ("copy t to stdout", WRITE), ("select 1; delete from t", WRITE), ("explain analyze delete from t", WRITE),
    ("selec 1", WRITE), ("select unknown_function()", WRITE), ("begin", WRITE), ("set x = 1", WRITE),
    ("listen c", WRITE), ("call p()", WRITE),
]


@pytest.mark.parametrize("sql, kind", CLASSIFIED)
def test_classification_table(sql, kind):
    c = Classifier(volatile=["my_writer"])
    c.load_catalog("db", ["now", "count", "generate_series"])
    assert c.classify(sql, "db") == kind


def test_configured_function_lists():
    c = Classifier(read_only=["my_report"], volatile=["now"])
    c.load_catalog("db", ["now", "count"])
    assert c.classify("select my_report()", "db") == READ
    assert c.classify("select now()", "db") == WRITE


def test_a_read_classified_before_its_catalog_loaded_is_classified_again_after():
    c = Classifier()
    c.load_catalog("db", ())  # (loading: an unknown function counts as a write meanwhile)
    assert c.classify("select my_report(1)", "db", "select my_report(?)") == WRITE
    c.load_catalog("db", ["my_report"])
    assert c.classify("select my_report(2)", "db", "select my_report(?)") == READ
    c.load_catalog("other", ())  # (another database's load keeps this one's classifications)
    assert c.classify("select my_report(3)", "db", "select my_report(?)") == READ


def test_hint_parsing():
    assert parse_hints("/*+ route=standby node=a */ select 1", {"a"}) == {"route": "standby", "node": "a"}
    assert parse_hints("select /*+ route=primary */ 1", {"a"}) == {}  # only a leading comment counts
    for bad in ("/*+ route=sideways */ select 1", "/*+ speed=fast */ select 1", "/*+ route */ select 1"):
        with pytest.raises(ProxyError):
            parse_hints(bad, {"a"})


def test_balancer_strategies():
    class N:
        def __init__(self, name, weight):
            self.name, self.weight = name, weight
    a, b = N("a", 1), N("b", 3)
    weighted = Balancer("weighted")
    assert collections.Counter(weighted.choose([a, b]).name for _ in range(400)) == {"a": 100, "b": 300}
    rr = Balancer("round_robin")
    assert [rr.choose([a, b]).name for _ in range(4)] == ["a", "b", "a", "b"]
    rnd = Balancer("random", rng=random.Random(1))
    counts = collections.Counter(rnd.choose([a, b]).name for _ in range(4000))
    assert 800 < counts["a"] < 1200
    least = Balancer("least_connections")
    least.started(a)
    assert least.choose([a, N("c", 1)]).name == "c"
    fast = Balancer("latency")
    fast.finished(a, 0.010)
    fast.finished(b, 0.001)
    assert fast.choose([a, b]).name == "b"


def test_standby_beyond_max_lag_gets_no_reads(start_proxy, cluster, direct):
    proxy = start_proxy(pool={"mode": "transaction"}, nodes=nodes(cluster),
                        routing={"max_lag_bytes": 256 * 1024, "lag_check_interval": 0.05})
    conn = proxy.connect()
    conn.autocommit = True
    cur = conn.cursor()
    wait_standby_reads(proxy)
    assert len(ports_of(cur, "select inet_server_port()", 20)) == 2  # both standbys in use
    paused = psycopg2.connect(host="127.0.0.1", port=cluster.ports[2], user="postgres", dbname="postgres")
    paused.autocommit = True
    paused.cursor().execute("select pg_wal_replay_pause()")
    try:
        direct.cursor().execute("drop table if exists lag_t; create table lag_t as "
                                "select g, repeat('x', 200) from generate_series(1, 20000) g")
        import time
        time.sleep(0.5)  # a few lag checks
        seen = ports_of(cur, "select inet_server_port()", 40)
        assert seen == {cluster.ports[1]: 40}
    finally:
        paused.cursor().execute("select pg_wal_replay_resume()")
        paused.close()
    cluster.wait_replayed()
    import time
    time.sleep(0.3)
    assert len(ports_of(cur, "select inet_server_port()", 20)) == 2  # back once it caught up


def test_read_your_writes_token_across_sessions(routed, cluster):
    writer = routed.connect()
    writer.autocommit = True
    wc = writer.cursor()
    wc.execute("create table if not exists token_t(id int)")
    reader = routed.connect()
    reader.autocommit = True
    rc = reader.cursor()
    missed = 0
    for i in range(200):
        wc.execute("insert into token_t values (%s)", (i,))
        wc.execute("show helios.write_lsn")
        token = wc.fetchone()[0]
        assert "/" in token
        rc.execute("set helios.read_after = %s", (token,))
        rc.execute("select count(*) from token_t where id = %s", (i,))
        missed += rc.fetchone()[0] != 1
    assert missed == 0
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="helios.read_after"):
        rc.execute("set helios.read_after = 'nonsense'")


def test_unreachable_standby_does_not_fail_clients(start_proxy, cluster):
    from helios_proxy.devcluster import free_port
    dead = {"name": "dead", "host": "127.0.0.1", "port": free_port(), "role": "standby"}
    proxy = start_proxy(pool={"mode": "transaction"}, nodes=nodes(cluster)[:2] + [dead])
    conn = proxy.connect()
    conn.autocommit = True
    wait_standby_reads(proxy)
    seen = ports_of(conn.cursor(), "select inet_server_port()", 20)
    assert set(seen) <= {cluster.ports[0], cluster.ports[1]} and seen[cluster.ports[1]] >= 9
    deadline = time.monotonic() + 15  # the probes decide: health.failure_threshold x health.interval
    while "node dead is unhealthy" not in proxy.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "node dead is unhealthy" in proxy.output()


def test_mixed_routed_workload_soak(routed, cluster, direct):
    """20 clients for a few seconds mixing reads, writes, transactions, prepared statements and
    read-your-writes checks; no error, no missed own write."""
    import threading
    import time
    direct.cursor().execute("create table if not exists soak_r(id serial primary key, owner int, v int)")
    cluster.wait_replayed()
    stop = time.time() + 5
    errors = []

    def worker(i):
        rng = random.Random(i)
        try:
            with psycopg.connect(routed.dsn(), prepare_threshold=rng.choice([0, None]),
                                 autocommit=True) as conn:
                for _ in range(300):
                    if time.time() > stop:
                        return
                    kind = rng.randrange(4)
                    if kind == 0:
                        rid = conn.execute("insert into soak_r(owner, v) values (%s, %s) returning id",
                                           (i, rng.randrange(100))).fetchone()[0]
                        assert conn.execute("select count(*) from soak_r where id = %s", (rid,)).fetchone()[0] == 1
                    elif kind == 1:
                        with conn.transaction():
                            conn.execute("update soak_r set v = v + 1 where owner = %s", (i,))
                            conn.execute("select sum(v) from soak_r where owner = %s", (i,)).fetchone()
                    elif kind == 2:
                        conn.execute("select inet_server_port(), %s::int", (i,)).fetchone()
                    else:
                        with pytest.raises(psycopg.errors.DivisionByZero):
                            conn.execute("select 1 / (%s::int - %s::int)", (i, i))
        except BaseException as e:
            errors.append(repr(e)[:200])
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]


def test_health_probes_take_a_stopped_standby_out_and_back(start_proxy, cluster):
    import subprocess
    import time
    proxy = start_proxy(pool={"mode": "transaction"}, nodes=nodes(cluster),
                        health={"interval": 0.1, "failure_threshold": 2, "success_threshold": 2})
    conn = proxy.connect()
    conn.autocommit = True
    cur = conn.cursor()
    assert len(ports_of(cur, "select inet_server_port()", 10)) == 2
    pg_ctl = [f"{cluster.bin}/pg_ctl", "-D", cluster.datadir(2), "-w"]
    subprocess.run(pg_ctl + ["-m", "fast", "stop"], user=cluster.user, check=True, capture_output=True)
    try:
        deadline = time.time() + 10
        while "node standby2 is unhealthy" not in proxy.output() and time.time() < deadline:
            time.sleep(0.05)
        assert set(ports_of(cur, "select inet_server_port()", 20)) == {cluster.ports[1]}  # no client errors
    finally:
        subprocess.run(pg_ctl + ["-l", cluster.datadir(2) + ".log", "-o",
                                 f"-p {cluster.ports[2]} -k {cluster.base}", "start"],
                       user=cluster.user, check=True, capture_output=True)
    deadline = time.time() + 15
    while "node standby2 is healthy again" not in proxy.output() and time.time() < deadline:
        time.sleep(0.05)
    assert len(ports_of(cur, "select inet_server_port()", 20)) == 2


def test_a_busy_primary_pool_never_makes_a_lagging_standby_look_fresh(start_proxy, cluster, direct):
    """The lag check has its own connections: with the only primary connection held by a client,
    a standby far behind still gets no reads (they wait for the primary instead of reading stale
    rows); and a standby whose lag cannot be measured is not fit either."""
    import threading
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1}, nodes=nodes(cluster)[:2],
                        routing={"max_lag_bytes": 64 * 1024, "lag_check_interval": 0.05})
    wait_standby_reads(proxy)
    direct.cursor().execute("drop table if exists stale_t; create table stale_t (g int)")
    paused = psycopg2.connect(host="127.0.0.1", port=cluster.ports[1], user="postgres", dbname="postgres")
    paused.autocommit = True
    paused.cursor().execute("select pg_wal_replay_pause()")
    holder = proxy.connect()
    try:
        direct.cursor().execute("insert into stale_t select generate_series(1, 20000)")
        hc = holder.cursor()
        hc.execute("select txid_current()")  # a transaction on the primary: its one connection is held
        time.sleep(0.5)  # lag checks meanwhile
        counts = []
        reader = threading.Thread(target=lambda: counts.append(proxy.query("select count(*) from stale_t")))
        reader.start()
        time.sleep(0.5)
        holder.commit()
        reader.join(30)
        assert counts == [[(20000,)]]
    finally:
        holder.close()
        paused.cursor().execute("select pg_wal_replay_resume()")
        paused.close()
        cluster.wait_replayed()


def test_the_health_probes_keep_their_connection_and_a_closed_one_is_not_a_failure(start_proxy, cluster, direct):
    """A probe per interval on the connection the last good probe used (not a backend's start per
    probe and node); a kept connection the server closed is replaced at once, and the node stays
    healthy even when a single failure would count (failure_threshold = 1)."""
    proxy = start_proxy(pool={"mode": "transaction"}, nodes=nodes(cluster)[:1],  # (its probes: told by their database)
                        health={"interval": 0.1, "failure_threshold": 1, "database": "template1"})
    cur = direct.cursor()

    def probes():
        cur.execute("select pid from pg_stat_activity where application_name = 'helios-health' "
                    "and datname = 'template1'")
        return {row[0] for row in cur.fetchall()}

    seen, deadline = set(), time.time() + 1.5  # ~15 probes
    while time.time() < deadline:
        seen |= probes()
        time.sleep(0.02)
    assert len(seen) == 1, seen  # one backend all along
    cur.execute("select pg_terminate_backend(%s)", (seen.pop(),))
    deadline = time.time() + 10
    while not probes() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert len(probes()) == 1
    assert "is unhealthy" not in proxy.output()
    conn, pcur = proxy.autocommit()
    pcur.execute("select 1")  # (the primary still takes writes: no failover, no buffering)
    conn.close()
