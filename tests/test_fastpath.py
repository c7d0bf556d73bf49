"""The fast path (frontend/fastpath.py): a pooled session's lone simple Query handled in its socket's
read callback. What a client sees must not change: every test here checks answers and state, and
the transitions between the fast path and the session's greenlet (pipelined queries, SET, a
transaction, a large query, COPY, a cancel, PAUSE/RESUME, a client that stops reading, the idle
timeout). The whole suite runs with it on (the default); HELIOS_TEST_FAST_PATH=0 runs it off."""
import subprocess
import threading
import time

import psycopg2
import pytest

from helios_proxy.protocol import codec

from .background import Background
from .wire import Wire


@pytest.fixture(scope="module")
def fast(cluster, tmp_path_factory):
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path_factory.mktemp("fast")), cluster,
                     server={"fast_path": True}, pool={"mode": "transaction", "max_size": 4}).start()
    yield p
    p.stop()


def counts(proxy):
    return proxy.get("/fast_path")


def test_pgbench_select_only_takes_the_fast_path_and_every_answer_is_right(fast, pgbench):
    before = counts(fast)["hits"]
    select_only(fast.port, 4, 300)
    state = counts(fast)
    assert state["enabled"] and state["stages_allow"]
    assert state["hits"] - before >= 1100, state  # (a few miss: no idle connection at that instant)
    rows = fast.get("/stats")
    assert sum(r["total_fast_path_hits"] for r in rows) == state["hits"]
    with psycopg2.connect(host="127.0.0.1", port=fast.port, user="postgres", dbname="postgres") as conn:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("select aid, abalance from pgbench_accounts where aid in (1, 2, 3) order by aid")
        assert [r[0] for r in cur.fetchall()] == [1, 2, 3]


def test_prometheus_counts_hits_and_misses_by_reason(fast):
    conn, cur = fast.autocommit()
    cur.execute("select 1")
    cur.execute("begin")
    cur.execute("select 2")  # (inside a transaction: on the lease held)
    cur.execute("commit")  # (a COMMIT: its xid asked first, through the forwarder's handlers)
    cur.execute("prepare fast_counted as select 1")  # (PREPARE under pooling: the greenlet's)
    conn.close()
    import urllib.request
    request = urllib.request.Request(f"http://127.0.0.1:{fast.admin_port}/metrics/prometheus",
                                     headers={"Authorization": "Bearer test-token"})
    text = urllib.request.urlopen(request, timeout=30).read().decode()
    assert 'helios_fast_path_requests_total{outcome="hit"}' in text
    assert 'helios_fast_path_requests_total{outcome="a stage\'s decision"}' in text
    assert counts(fast)["misses_by_reason"]["a stage's decision"] >= 1


def select_only(port, clients, transactions, protocol="simple"):
    """pgbench -S through the proxy on port: every transaction processed."""
    out = subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-n", "-S", "-M", protocol,
                          "-c", str(clients), "-j", "2", "-t", str(transactions), "postgres"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    total = clients * transactions
    assert f"number of transactions actually processed: {total}/{total}" in out.stdout


def tpcb_totals(cluster):
    """The balances of pgbench's tables, the deltas of its history and how many rows it holds."""
    return [int(x) for x in cluster.sql(
        "select (select sum(abalance) from pgbench_accounts), (select sum(tbalance) from pgbench_tellers), "
        "(select sum(bbalance) from pgbench_branches), (select coalesce(sum(delta), 0) from pgbench_history), "
        "(select count(*) from pgbench_history)").strip().split("|")]


def assert_each_change_stored_once(cluster, before, transactions):
    """After a pgbench TPC-B run (which empties pgbench_history first): a history row per
    transaction, and each delta once in every table."""
    after = tpcb_totals(cluster)
    assert after[4] == transactions
    assert after[0] - before[0] == after[1] - before[1] == after[2] - before[2] == after[3]


def query_all(wire, *chunks):
    """Send chunks in one write; the replies up to as many ReadyForQuery as Queries sent."""
    wire.send(b"".join(chunks))
    out, ready = [], 0
    while ready < len(chunks):
        msg = wire.read()
        out.append(msg)
        ready += msg[0] == b"Z"
    return out


def rows(replies):
    return [body for t, body in replies if t == b"D"]


def test_pipelined_queries_a_large_one_and_an_error_go_the_usual_way_and_answer_in_order(fast):
    w = Wire(fast.port)
    w.startup(user="postgres", database="postgres")
    replies = query_all(w, codec.query("select 1"), codec.query("select 1/0"), codec.query("select 3"))
    assert [t for t, _ in replies] == [b"T", b"D", b"C", b"Z", b"E", b"Z", b"T", b"D", b"C", b"Z"]
    big = "select '" + "x" * 20000 + "' as big"
    replies = query_all(w, codec.query(big))
    assert len(rows(replies)) == 1 and b"x" * 20000 in rows(replies)[0]
    replies = query_all(w, codec.query("select 4"))  # (fast again)
    assert rows(replies) == [b"\x00\x01\x00\x00\x00\x014"]
    w.send(codec.TERMINATE)
    w.close()


def test_requests_and_answers_about_the_size_of_the_first_read_take_the_fast_path_whole(fast):
    """The callbacks' reads in Python take FIRST_READ bytes first and the rest only when it filled
    (speedups.py_read; the C read, READ_SIZE at once): a Query and an answer just below, at and
    above it, and far above, all on the fast path and all answered whole."""
    from helios_proxy.speedups import FIRST_READ
    conn, cur = fast.autocommit()
    cur.execute("select 1")  # (the session's first request)
    before, asked = counts(fast)["hits"], 0
    for total in (FIRST_READ - 1, FIRST_READ, FIRST_READ + 1, 3 * FIRST_READ):
        for answer in (FIRST_READ - 60, FIRST_READ, FIRST_READ * 5, 200000):
            base = f"select repeat('x', {answer}) as r, length(/**/'') as n"
            sql = base.replace("/**/", "/*" + "p" * (total - 6 - len(base)) + "*/")
            assert len(codec.query(sql)) == total
            cur.execute(sql)
            assert cur.fetchall() == [("x" * answer, 0)]
            asked += 1
    assert counts(fast)["hits"] - before == asked
    conn.close()


def test_settings_follow_the_client_through_the_fast_path(fast):
    conn, cur = fast.autocommit()
    cur.execute("set work_mem = '3MB'")
    for _ in range(20):  # every server connection it lands on carries its setting
        cur.execute("show work_mem")
        assert cur.fetchone()[0] == "3MB"
    other = fast.connect()
    other.autocommit = True
    oc = other.cursor()
    for _ in range(10):  # and none leaks to another client
        oc.execute("show work_mem")
        assert oc.fetchone()[0] != "3MB"
    cur.execute("reset work_mem")
    cur.execute("show work_mem")
    assert cur.fetchone()[0] != "3MB"
    conn.close()
    other.close()


def test_a_transaction_and_copy_in_between_fast_queries(fast, cluster):
    cluster.sql("create table if not exists fast_t (a int)")
    cluster.sql("truncate fast_t")
    conn, cur = fast.autocommit()
    cur.execute("select 1")
    cur.execute("begin")
    cur.execute("insert into fast_t values (1)")
    cur.execute("select count(*) from fast_t")
    assert cur.fetchone()[0] == 1
    cur.execute("rollback")
    import io
    cur.copy_expert("copy fast_t from stdin", io.StringIO("5\n6\n"))
    cur.execute("select sum(a) from fast_t")
    assert cur.fetchone()[0] == 11
    conn.close()


def test_a_cancel_reaches_a_query_that_took_the_fast_path(fast):
    conn, cur = fast.autocommit()
    timer = threading.Timer(0.5, conn.cancel)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled):
        cur.execute("select pg_sleep(10)")
    assert time.monotonic() - t0 < 5
    cur.execute("select 7")
    assert cur.fetchone()[0] == 7
    conn.close()


def test_pause_holds_fast_queries_until_resume(fast):
    conn, cur = fast.autocommit()
    cur.execute("select 1")
    assert fast.api("POST", "/pause", {})[0] in (200, 202)
    done = []
    t = threading.Thread(target=lambda: (cur.execute("select 8"), done.append(cur.fetchone()[0])))
    t.start()
    time.sleep(0.5)
    assert done == []  # held while paused
    assert fast.api("POST", "/resume", {})[0] == 200
    t.join(10)
    assert done == [8]
    conn.close()


def test_a_cancel_reaches_a_query_held_by_pause_and_the_session_goes_on(fast):
    """PAUSE holds new transactions; Ctrl-C on one of them ends its wait with 57014 at once (it does
    not run at RESUME), and the session goes on."""
    conn, cur = fast.autocommit()
    cur.execute("select 1")
    assert fast.api("POST", "/pause", {})[0] in (200, 202)
    t = Background(cur, "select 8")
    got = t.got
    try:
        time.sleep(0.5)
        assert got == []  # held while paused
        conn.cancel()
        t.join(5)
        assert got and isinstance(got[0], psycopg2.errors.QueryCanceled), got
    finally:
        assert fast.api("POST", "/resume", {})[0] == 200
    t.join(10)
    cur.execute("select 9")
    assert cur.fetchone() == (9,) and got[1:] == []
    conn.close()


def test_a_client_that_stops_reading_gets_everything_once_it_reads(fast):
    w = Wire(fast.port)
    w.startup(user="postgres", database="postgres")
    w.send(codec.query("select repeat('y', 100000) from generate_series(1, 100)"))
    time.sleep(1.0)  # (it reads nothing meanwhile: the proxy stops reading the server)
    got, size = 0, 0
    while True:
        t, body = w.read()
        if t == b"D":
            got += 1
            size += len(body)
        if t == b"Z":
            break
    assert got == 100 and size > 100 * 100000
    assert rows(query_all(w, codec.query("select 9"))) == [b"\x00\x01\x00\x00\x00\x019"]
    w.close()


def test_the_idle_timeout_ends_an_idle_client_but_not_one_served_by_the_fast_path(cluster, tmp_path):
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path), cluster, server={"fast_path": True, "client_idle_timeout": 1.0},
                     pool={"mode": "transaction"}).start()
    try:
        busy, idle = p.connect(), p.connect()
        busy.autocommit = idle.autocommit = True
        cur = busy.cursor()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            cur.execute("select 1")
            time.sleep(0.05)
        cur.execute("select 2")
        assert cur.fetchone()[0] == 2
        with pytest.raises(psycopg2.OperationalError):
            idle.cursor().execute("select 1")
        busy.close()
    finally:
        p.stop()


def test_off_it_takes_nothing(cluster, tmp_path):
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path), cluster, server={"fast_path": False}, pool={"mode": "transaction"}).start()
    try:
        assert p.query("select 5") == [(5,)]
        state = p.get("/fast_path")
        assert state["hits"] == 0 and not state["enabled"]
    finally:
        p.stop()


def test_queries_inside_a_transaction_take_the_fast_path_and_tpcb_stays_consistent(fast, pgbench, cluster):
    """TPC-B: BEGIN, three UPDATEs, a SELECT, an INSERT, END; the statements between BEGIN and END
    go on the lease the client holds, from the callback, and so does the END (replay asks its xid
    first, through the forwarder's handlers). Every change is stored once, in full."""
    before = tpcb_totals(cluster)
    hits = counts(fast)["hits"]
    pgbench(fast.port, "simple", 4, 100)
    assert counts(fast)["hits"] - hits >= 4 * 100 * 7 - 20  # (all seven of each, but a few that found no
    assert_each_change_stored_once(cluster, before, 400)   # idle connection at their instant)


def test_a_transaction_held_on_the_fast_path_is_the_clients_alone(fast):
    """Inside a transaction the fast path sends on the client's own lease: another client's fast
    queries never see its uncommitted row or its SET LOCAL, and an error ends only its transaction."""
    a, acur = fast.autocommit()
    b, bcur = fast.autocommit()
    acur.execute("create table if not exists fast_held (a int)")
    acur.execute("truncate fast_held")
    acur.execute("begin")
    acur.execute("set local statement_timeout = '4321ms'")
    acur.execute("insert into fast_held values (1)")
    acur.execute("select count(*) from fast_held")
    assert acur.fetchone()[0] == 1
    for _ in range(20):
        bcur.execute("select count(*) from fast_held")
        assert bcur.fetchone()[0] == 0
        bcur.execute("show statement_timeout")
        assert bcur.fetchone()[0] != "4321ms"
    acur.execute("show statement_timeout")
    assert acur.fetchone()[0] == "4321ms"
    with pytest.raises(psycopg2.errors.DivisionByZero):
        acur.execute("select 1 / 0")
    with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
        acur.execute("select 1")
    bcur.execute("select 5")
    assert bcur.fetchone()[0] == 5
    acur.execute("rollback")
    acur.execute("select count(*) from fast_held")
    assert acur.fetchone()[0] == 0
    a.close()
    b.close()


def test_session_pooling_takes_the_fast_path_and_keeps_the_clients_settings(cluster, tmp_path, pgbench):
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path), cluster, server={"fast_path": True}, pool={"mode": "session", "max_size": 8}).start()
    try:
        conn, cur = p.autocommit()
        cur.execute("set application_name = 'held-fast'")
        for i in range(50):
            cur.execute("select %s::int, current_setting('application_name')" % i)
            assert cur.fetchone() == (i, "held-fast")
        other, ocur = p.autocommit()
        ocur.execute("show application_name")
        assert ocur.fetchone()[0] != "held-fast"
        select_only(p.port, 4, 200)
        assert counts(p)["hits"] >= 800 + 50
        conn.close()
        other.close()
    finally:
        p.stop()


def test_unnamed_extended_batches_take_the_fast_path(fast, pgbench, cluster):
    """pgbench -M extended: Parse, Bind, Describe, Execute, Sync of the unnamed statement per query,
    between transactions and inside them; the answers are right and every change is stored once."""
    assert_select_only_and_tpcb_on_the_fast_path(fast, pgbench, cluster, "extended")


def assert_select_only_and_tpcb_on_the_fast_path(fast, pgbench, cluster, protocol):
    """pgbench -M protocol select-only (800 requests) then TPC-B (200 transactions): (nearly) every
    request a hit, all seven of each TPC-B transaction, and every change stored once."""
    hits = counts(fast)["hits"]
    select_only(fast.port, 4, 200, protocol)
    assert counts(fast)["hits"] - hits >= 700
    before = tpcb_totals(cluster)
    hits = counts(fast)["hits"]
    pgbench(fast.port, protocol, 4, 50)
    assert counts(fast)["hits"] - hits >= 4 * 50 * 7 - 20
    assert_each_change_stored_once(cluster, before, 200)


def test_extended_batches_with_errors_and_parameters_answer_as_postgresql_does(fast):
    """psycopg 3 sends each parameterized query as an unnamed batch: values, NULLs, an error in
    the Parse, an error at Execute, a transaction around them: the session goes on after each."""
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(host="127.0.0.1", port=fast.port, user="postgres", dbname="postgres",
                         autocommit=True, prepare_threshold=None) as conn:
        hits = counts(fast)["hits"]
        for i in range(30):
            row = conn.execute("select %s::int + 1, %s::text, %s::int", (i, f"v{i}", None)).fetchone()
            assert row == (i + 1, f"v{i}", None)
        assert counts(fast)["hits"] - hits >= 25
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("selec %s", (1,))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1 / %s", (0,))
        assert conn.execute("select %s::int * 2", (21,)).fetchone() == (42,)
        with conn.transaction():
            conn.execute("create temp table fast_ext (a int)")
            conn.execute("insert into fast_ext values (%s), (%s)", (1, 2))
            assert conn.execute("select sum(a) from fast_ext where a > %s", (0,)).fetchone() == (3,)
        assert conn.execute("select %s::text", ("after",)).fetchone() == ("after",)


def test_more_clients_than_connections_wait_in_line_without_their_greenlets(fast):
    """12 clients on a pool of 4: a query that finds no idle connection waits in the pool's line
    from the callback and goes on when one is given back; every answer is each client's own."""
    queued = counts(fast)["queued"]
    select_only(fast.port, 12, 150)
    assert counts(fast)["queued"] > queued
    errors = []

    def client(k):
        try:
            conn, cur = fast.autocommit()
            for i in range(40):
                cur.execute(f"select {k} * 1000 + {i}, pg_backend_pid()")
                if cur.fetchone()[0] != k * 1000 + i:
                    errors.append((k, i))
            conn.close()
        except Exception as e:  # pragma: no cover (reported below)
            errors.append(e)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def hold_every_connection(proxy, n, seconds):
    """n clients each holding a server connection in a transaction for about `seconds`."""
    holders = []
    for _ in range(n):
        conn, cur = proxy.autocommit()
        cur.execute("begin")
        cur.execute("select 1")
        holders.append(conn)

    def end():
        time.sleep(seconds)
        for conn in holders:
            conn.cursor().execute("commit")
            conn.close()
    ender = threading.Thread(target=end)
    ender.start()
    return ender


def test_a_cancel_reaches_a_query_waiting_in_line_and_the_session_goes_on(fast):
    conn, cur = fast.autocommit()
    cur.execute("select 10")  # (its startup settings checked on a server: its requests may take the fast path)
    ender = hold_every_connection(fast, 4, 3.0)
    queued = counts(fast)["queued"]
    timer = threading.Timer(0.5, conn.cancel)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled):
        cur.execute("select 11")
    assert time.monotonic() - t0 < 2.5  # (before any connection was given back)
    assert counts(fast)["queued"] == queued + 1
    ender.join(10)
    cur.execute("select 12")
    assert cur.fetchone()[0] == 12
    conn.close()


def test_a_query_waiting_in_line_past_the_acquire_timeout_gets_57014_and_the_session_goes_on(cluster, tmp_path):
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path), cluster, server={"fast_path": True},
                     pool={"mode": "transaction", "max_size": 1, "acquire_timeout": 1.0}).start()
    try:
        conn, cur = p.autocommit()
        cur.execute("select 10")
        ender = hold_every_connection(p, 1, 2.5)
        t0 = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled) as e:
            cur.execute("select 13")
        assert "timed out after 1 s waiting for a server connection" in str(e.value)
        assert 0.8 < time.monotonic() - t0 < 2.4
        assert counts(p)["queued"] >= 1
        ender.join(10)
        cur.execute("select 14")
        assert cur.fetchone()[0] == 14
        conn.close()
    finally:
        p.stop()


def test_a_query_waiting_in_line_is_not_idleness(cluster, tmp_path):
    """client_idle_timeout ends idle clients; one whose query waits in line longer than that is
    answered once a connection is given back, and its next query too."""
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path), cluster, server={"fast_path": True, "client_idle_timeout": 1.0},
                     pool={"mode": "transaction", "max_size": 1, "acquire_timeout": 10.0}).start()
    try:
        conn, cur = p.autocommit()
        cur.execute("select 10")
        queued = counts(p)["queued"]
        ender = hold_every_connection(p, 1, 2.5)  # (its transaction: commit after 2.5 s)
        t0 = time.monotonic()
        cur.execute("select 15")
        assert cur.fetchone()[0] == 15 and time.monotonic() - t0 > 1.5
        assert counts(p)["queued"] == queued + 1
        cur.execute("select 16")
        assert cur.fetchone()[0] == 16
        ender.join(10)
        conn.close()
    finally:
        p.stop()


def test_a_query_waiting_in_line_gets_the_room_of_a_connection_that_was_closed(cluster, tmp_path):
    """The connection the line waits for is closed instead of given back (its server process was
    terminated): the waiting query opens one of its own and is answered; nothing in the log."""
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path), cluster, server={"fast_path": True},
                     pool={"mode": "transaction", "max_size": 1, "acquire_timeout": 10.0}).start()
    try:
        conn, cur = p.autocommit()
        cur.execute("select 10")
        holder, hcur = p.autocommit()
        hcur.execute("begin")
        hcur.execute("select pg_backend_pid()")
        pid = hcur.fetchone()[0]
        queued = counts(p)["queued"]
        killer = threading.Timer(1.0, lambda: cluster.sql(f"select pg_terminate_backend({pid})"))
        killer.start()
        t0 = time.monotonic()
        cur.execute("select 17")
        assert cur.fetchone()[0] == 17 and time.monotonic() - t0 > 0.8
        assert counts(p)["queued"] == queued + 1
        killer.join(10)
        holder.close()
        conn.close()
    finally:
        p.stop()  # (asserts no traceback in the proxy's log)


def test_named_prepared_statements_take_the_fast_path(fast, pgbench, cluster):
    """pgbench -M prepared: each statement parsed once by name, then Bind, Describe, Execute, Sync
    per run, on whatever server connection the transaction gets (the pool's names translated, the
    statement parsed there first if it lacks it); answers right, TPC-B consistent. All seven of each
    TPC-B transaction are hits: a prepared UPDATE ... SET is no settings change that the lease's
    end must read back in a worker greenlet (which kept the next request off the fast path)."""
    assert_select_only_and_tpcb_on_the_fast_path(fast, pgbench, cluster, "prepared")


def test_prepared_statements_by_name_from_psycopg3_answer_right_on_the_fast_path(fast):
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(host="127.0.0.1", port=fast.port, user="postgres", dbname="postgres",
                         autocommit=True, prepare_threshold=0) as conn:
        hits = counts(fast)["hits"]
        for i in range(40):
            assert conn.execute("select %s::int * 3, %s::text", (i, f"p{i}")).fetchone() == (i * 3, f"p{i}")
        assert counts(fast)["hits"] - hits >= 30
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1 / %s::int", (0,))
        assert conn.execute("select 1 / %s::int", (1,)).fetchone() == (1,)
        with conn.transaction():
            assert conn.execute("select %s::int * 3, %s::text", (5, "again")).fetchone() == (15, "again")


def test_a_connection_due_for_its_check_is_checked_by_the_greenlet_never_lost(start_proxy):
    """A server connection unused for pool.check_after is checked (pool.check_query) before it is
    lent again; that waits for the server, which a loop callback must never do: the fast path
    leaves it to the session's greenlet. The connection taken is never lost to the pool (before:
    the check failed in the callback, the connection was neither idle nor lent, and a pool of 2
    ran dry at the second such request)."""
    proxy = start_proxy(server={"fast_path": True}, pool={"mode": "transaction", "max_size": 2, "check_after": 0.3,
                                                          "acquire_timeout": 10})
    conn, cur = proxy.autocommit()
    before = counts(proxy)
    for _ in range(5):
        cur.execute("select 1")
        assert cur.fetchone() == (1,)
        time.sleep(0.5)  # (longer than check_after: the next request's connection is due for its check)
    after = counts(proxy)
    assert after["misses"] - before["misses"] >= 4  # (the greenlet took them)
    assert after["misses_by_reason"]["a server connection due for its check (pool.check_after)"] >= 4
    others = [proxy.connect() for _ in range(2)]  # the pool's two connections, both still there
    for other in others:
        other.autocommit = True
        other.cursor().execute("begin; select 1")  # (each holds one)
    for other in others:
        other.close()
    assert "the fast path failed" not in proxy.output()
    conn.close()


def test_a_client_at_rest_gets_its_last_connection_again_only_as_the_pool_would_lend_it(start_proxy):
    """A session at rest takes the server connection of its last transaction again, without the
    general take, while it is still the pool's idle one on top and may go on as it is
    (LeaseSlot.take_again): once another client has used it with other settings, or it outlived
    pool.server_lifetime, the client's next request takes what the pool would lend anyone (its
    settings applied; a new connection), as every request did before."""
    proxy = start_proxy(server={"fast_path": True}, pool={"mode": "transaction", "max_size": 1,
                                                          "server_lifetime": 1.0, "acquire_timeout": 10})
    conn, cur = proxy.autocommit()
    cur.execute("set work_mem = '3MB'")
    pids = set()
    for _ in range(5):
        cur.execute("select pg_backend_pid(), current_setting('work_mem')")
        pid, work_mem = cur.fetchone()
        assert work_mem == "3MB"
        pids.add(pid)
    assert len(pids) == 1  # (one connection in the pool: the same one, again and again)
    other = proxy.connect()
    other.autocommit = True
    oc = other.cursor()
    oc.execute("select pg_backend_pid(), current_setting('work_mem')")
    assert oc.fetchone() == (pid, "4MB")  # (the same connection, the server's default setting: not the first client's)
    hits = counts(proxy)["hits"]
    cur.execute("select pg_backend_pid(), current_setting('work_mem')")
    assert cur.fetchone() == (pid, "3MB")  # its setting applied again: the connection carried the other's
    cur.execute("select current_setting('work_mem')")
    assert cur.fetchone() == ("3MB",)
    assert counts(proxy)["hits"] > hits
    time.sleep(1.3)  # (past server_lifetime: the pool closes the connection instead of lending it)
    cur.execute("select pg_backend_pid(), current_setting('work_mem')")
    newer, work_mem = cur.fetchone()
    assert newer != pid and work_mem == "3MB"
    oc.execute("select count(*) from pg_stat_activity where pid = %s", (pid,))
    assert oc.fetchone() == (0,)
    other.close()
    conn.close()


def test_a_client_at_rest_waits_for_a_confirmed_primary_like_any_other(start_proxy):
    """With no confirmed primary (an operator's clear here; a failover, a switchover's pause) a new
    transaction waits in the switchover buffer, also one whose client is at rest with its last
    server connection idle on top of its pool: it never goes on that connection meanwhile."""
    proxy = start_proxy(server={"fast_path": True}, pool={"mode": "transaction"}, health={"interval": 30.0},
                        failover={"buffer_timeout": 1.0})
    conn, cur = proxy.autocommit()
    for _ in range(3):
        cur.execute("select 1")
    assert proxy.api("POST", "/primary/clear")[0] == 200
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError) as waited:
        cur.execute("select 1")
    assert waited.value.pgcode in ("57P03", "08006"), waited.value  # (waited for a failover, or none can come)
    assert proxy.api("POST", "/primary/confirm")[0] == 200
    cur.execute("select 2")
    assert cur.fetchone() == (2,)
    assert time.monotonic() - started < 30
    conn.close()


def test_inside_a_transaction_block_each_statement_sees_what_the_last_one_left(fast):
    """Statements of a transaction block go on the lease they hold from the client's read
    callback; what the last answer left is seen by the next request: one sent before the last
    answer came (a pipeline) waits for it, an error fails the block (25P02 until ROLLBACK), a
    setting's ParameterStatus reaches the client, PAUSE holds only the next transaction."""
    before = counts(fast)["hits"]
    w = Wire(fast.port)
    w.startup(user="postgres", database="postgres")
    w.send(codec.query("begin"))
    assert w.until_ready()[-1] == (b"Z", b"T")
    for k in range(3):  # (fast: the lease held, the last answer whole)
        w.send(codec.query(f"select {k}"))
        assert [t for t, _ in w.until_ready()] == [b"T", b"D", b"C", b"Z"]
    w.send(codec.query("select pg_sleep(0.3), 'first'"))
    time.sleep(0.1)
    w.send(codec.query("select 'second'"))  # (sent while the first runs)
    first, second = w.until_ready(), w.until_ready()
    assert b"first" in bytes(first[1][1]) and b"second" in bytes(second[1][1]) and second[-1] == (b"Z", b"T")
    w.send(codec.query("set local application_name = 'inside'"))
    assert (b"Z", b"T") in w.until_ready()
    w.send(codec.query("select current_setting('application_name')"))
    assert b"inside" in bytes(w.until_ready()[1][1])
    w.send(codec.query("select 1/0"))
    assert w.until_ready()[-1] == (b"Z", b"E")
    for _ in range(2):
        w.send(codec.query("select 1"))
        got = w.until_ready()
        assert got[0][0] == b"E" and b"25P02" in bytes(got[0][1]) and got[-1] == (b"Z", b"E"), got
    w.send(codec.query("rollback"))
    assert w.until_ready()[-1] == (b"Z", b"I")

    w.send(codec.query("begin"))
    w.until_ready()
    w.send(codec.query("select 'held'"))
    w.until_ready()
    assert fast.api("POST", "/pause", {"timeout": 1})[0] in (200, 202)
    try:
        w.send(codec.query("select 'inside the block'"))  # (its transaction goes on)
        assert b"inside the block" in bytes(w.until_ready()[1][1])
        w.send(codec.query("commit"))
        assert w.until_ready()[-1] == (b"Z", b"I")
        w.sock.settimeout(0.5)
        w.send(codec.query("select 'next'"))  # (a new transaction: held)
        with pytest.raises(OSError):
            w.read()
        w.sock.settimeout(10)
    finally:
        assert fast.api("POST", "/resume", {})[0] == 200
    assert b"next" in bytes(w.until_ready()[1][1])
    w.close()
    assert counts(fast)["hits"] - before >= 8


def test_a_commit_seen_again_ends_its_block_as_the_first_one_did(fast):
    """A COMMIT text is decided by the stages once per session (replay's decision: its xid is
    asked before it goes), then goes through the forwarder's handlers in the callback without
    them: each commits its block, one in a failed block answers ROLLBACK, one outside a block
    warns, as PostgreSQL does."""
    conn, cur = fast.autocommit()
    cur.execute("drop table if exists fp_commits; create table fp_commits (k int)")
    w = Wire(fast.port)
    w.startup(user="postgres", database="postgres")
    for k in range(4):
        for sql in ("begin", f"insert into fp_commits values ({k})"):
            w.send(codec.query(sql))
            assert w.until_ready()[-1] == (b"Z", b"T")
        w.send(codec.query("commit"))
        got = w.until_ready()
        assert (b"C", b"COMMIT\0") in [(t, bytes(b)) for t, b in got] and got[-1] == (b"Z", b"I"), got
    w.send(codec.query("begin"))
    w.until_ready()
    w.send(codec.query("select 1/0"))
    assert w.until_ready()[-1] == (b"Z", b"E")
    w.send(codec.query("commit"))
    got = w.until_ready()
    assert (b"C", b"ROLLBACK\0") in [(t, bytes(b)) for t, b in got] and got[-1] == (b"Z", b"I"), got
    w.send(codec.query("commit"))  # (no transaction in progress: a warning, then COMMIT)
    got = w.until_ready()
    assert [t for t, _ in got] == [b"N", b"C", b"Z"] and got[-1] == (b"Z", b"I"), got
    w.close()
    cur.execute("select array_agg(k order by k) from fp_commits")
    assert cur.fetchone()[0] == [0, 1, 2, 3]
    cur.execute("drop table fp_commits")
    conn.close()
