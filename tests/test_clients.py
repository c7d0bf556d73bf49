"""Real clients through the proxy behave exactly as against PostgreSQL: psql, psycopg2, psycopg 3, pgbench."""
import os
import select
import signal
import subprocess
import threading
import time

import psycopg
import psycopg2
import psycopg2.extensions
import pytest


def psql(proxy, *args, env=None, input=None):
    cmd = ["psql", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "postgres", "-d", "postgres", "-AtX", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=input,
                          env={**os.environ, **(env or {})})


def test_psql_simple_query_and_multi_statement(proxy):
    out = psql(proxy, "-c", "select 1; select 'two'")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "two"]


def test_psql_error_keeps_sqlstate_and_session_usable(proxy):
    out = psql(proxy, "-v", "VERBOSITY=verbose", "-c", "select 1/0", "-c", "select 'after'")
    assert "22012" in out.stderr and "division by zero" in out.stderr
    assert out.stdout.strip() == "after"


def test_notice_reaches_client(proxy):
    out = psql(proxy, "-c", "do $$ begin raise notice 'hello from plpgsql'; end $$")
    assert "NOTICE:  hello from plpgsql" in out.stderr


def test_psycopg2_params_large_result_and_error(proxy):
    conn = proxy.connect()
    cur = conn.cursor()
    cur.execute("select %s::int + 1, %s::text", (41, "x'y"))
    assert cur.fetchone() == (42, "x'y")
    cur.execute("select g, repeat('x', 100) from generate_series(1, 200000) g")
    rows = cur.fetchall()
    assert len(rows) == 200000 and rows[-1][0] == 200000
    with pytest.raises(psycopg2.errors.UniqueViolation):
        cur.execute("create temp table t(i int primary key); insert into t values (1), (1)")
    conn.rollback()
    cur.execute("select 'still fine'")
    assert cur.fetchone()[0] == "still fine"
    conn.close()


def test_psycopg2_transactions_commit_and_rollback(proxy, direct):
    d = direct.cursor()
    d.execute("drop table if exists tx_test; create table tx_test(v int)")
    conn = proxy.connect()
    cur = conn.cursor()
    cur.execute("insert into tx_test values (1)")
    conn.rollback()
    cur.execute("insert into tx_test values (2)")
    conn.commit()
    d.execute("select array_agg(v) from tx_test")
    assert d.fetchone()[0] == [2]
    conn.close()


def test_psycopg3_extended_protocol_prepared_and_binary(proxy):
    with psycopg.connect(proxy.dsn(), prepare_threshold=0) as conn:
        for i in range(30):
            assert conn.execute("select %s::int * 2", (i,)).fetchone()[0] == i * 2
        cur = conn.cursor(binary=True)
        cur.execute("select %b::bytea, %s::numeric", (b"\x00\x01\xff", "1.5"))
        assert cur.fetchone() == (b"\x00\x01\xff", __import__("decimal").Decimal("1.5"))
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from no_such_table where x = %s", (1,))
        conn.rollback()
        assert conn.execute("select 'ok'").fetchone()[0] == "ok"


def test_psycopg3_pipeline_mode(proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with conn.pipeline():
            curs = [conn.execute("select %s::int", (i,)) for i in range(200)]
        assert [c.fetchone()[0] for c in curs] == list(range(200))


def test_copy_in_and_out(proxy, direct):
    direct.cursor().execute("drop table if exists copy_test; create table copy_test(i int, t text)")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with conn.cursor().copy("copy copy_test from stdin") as cp:
            for i in range(50000):
                cp.write_row((i, f"row {i}"))
        with conn.cursor().copy("copy copy_test to stdout") as cp:
            rows = list(cp.rows())
        assert len(rows) == 50000 and rows[-1] == ("49999", "row 49999")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with conn.cursor().copy("copy copy_test(i) from stdin") as cp:
                cp.write(b"not-a-number\n")
        assert conn.execute("select count(*) from copy_test").fetchone()[0] == 50000


def test_psql_copy_from_stdin(proxy):
    out = psql(proxy, "-c", "create temp table c(a int)", "-c", "\\copy c from stdin", "-c",
               "select sum(a) from c", input="1\n2\n3\n\\.\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("6")


def test_listen_notify_with_real_pid(proxy):
    listener = proxy.connect()
    listener.autocommit = True
    lc = listener.cursor()
    lc.execute("listen chan; select pg_backend_pid()")
    lc.execute("select pg_backend_pid()")
    listener_pid = lc.fetchone()[0]
    assert listener.get_backend_pid() == listener_pid  # BackendKeyData carries the real pid
    sender = proxy.connect()
    sender.autocommit = True
    sender.cursor().execute("notify chan, 'payload-1'")
    sender_pid = sender.get_backend_pid()
    deadline = time.time() + 10
    while not listener.notifies and time.time() < deadline:
        select.select([listener], [], [], 1)  # waits on the socket, no query needed
        listener.poll()
    note = listener.notifies[0]
    assert (note.channel, note.payload, note.pid) == ("chan", "payload-1", sender_pid)
    listener.close()
    sender.close()


def test_cancel_reaches_the_running_query_only(proxy):
    victim, bystander = proxy.connect(), proxy.connect()
    bystander.autocommit = True
    result = {}

    def slow():
        try:
            bystander.cursor().execute("select pg_sleep(2), 'bystander done'")
            result["bystander"] = "ok"
        except Exception as e:  # pragma: no cover - reported below
            result["bystander"] = repr(e)

    t = threading.Thread(target=slow)
    t.start()
    timer = threading.Timer(0.5, victim.cancel)
    timer.start()
    started = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled):
        victim.cursor().execute("select pg_sleep(20)")
    assert time.monotonic() - started < 10
    t.join()
    assert result["bystander"] == "ok"
    victim.rollback()
    cur = victim.cursor()
    cur.execute("select 1")
    assert cur.fetchone()[0] == 1
    victim.close()
    bystander.close()


def test_psql_ctrl_c_cancels(proxy):
    p = subprocess.Popen(["psql", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "postgres", "-d",
                          "postgres", "-c", "select pg_sleep(30)"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=10)
    assert "canceling statement due to user request" in err


def test_terminate_backend_by_the_pid_the_client_sees(proxy, direct):
    conn = proxy.connect()
    pid = conn.get_backend_pid()
    direct.cursor().execute("select pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg2.OperationalError):
        conn.cursor().execute("select 1")
    assert proxy.connect().cursor() is not None  # the proxy itself is fine


def test_startup_parameters_reach_the_backend(proxy, cluster):
    options = r"-c statement_timeout=4321 -c search_path=abc,\ public --IntervalStyle=sql_standard"
    query = ("select current_setting('application_name'), current_setting('statement_timeout'), "
             "current_setting('search_path'), current_setting('IntervalStyle')")
    seen = []
    for port in (proxy.port, cluster.primary_port):  # the proxy must match PostgreSQL itself
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                application_name="myapp", options=options)
        cur = conn.cursor()
        cur.execute(query)
        seen.append((cur.fetchone(), conn.get_parameter_status("application_name"),
                     conn.get_parameter_status("IntervalStyle")))
        conn.close()
    assert seen[0] == seen[1]
    assert seen[0][0][:2] == ("myapp", "4321ms") and seen[0][2] == "sql_standard"


def test_bad_startup_parameter_is_fatal_like_postgres(proxy):
    with pytest.raises(psycopg2.OperationalError, match="unrecognized configuration parameter"):
        psycopg2.connect(proxy.dsn(options="'-c no_such_setting=1'"))
    with pytest.raises(psycopg2.OperationalError, match='database "nope" does not exist'):
        proxy.connect(dbname="nope")


def test_parameter_status_matches_backend(proxy, cluster):
    via = proxy.connect()
    direct = psycopg2.connect(host="127.0.0.1", port=cluster.primary_port, user="postgres", dbname="postgres")
    for name in ("server_version", "server_encoding", "client_encoding", "TimeZone", "integer_datetimes",
                 "standard_conforming_strings", "is_superuser", "session_authorization"):
        assert via.get_parameter_status(name) == direct.get_parameter_status(name), name
    via.close()
    direct.close()


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench(proxy, pgbench, mode):
    pgbench(proxy.port, mode, clients=4, transactions=200)


def test_clean_close_returns_connection_to_pool(proxy, direct):
    cur = direct.cursor()
    pids = set()
    for _ in range(5):
        conn = proxy.connect(application_name="reuse-check")
        pid = conn.get_backend_pid()
        pids.add(pid)
        conn.close()
        deadline = time.time() + 5
        while time.time() < deadline:  # the proxy resets the connection (DISCARD ALL), then pools it
            cur.execute("select state, application_name from pg_stat_activity where pid = %s", (pid,))
            if cur.fetchone() == ("idle", ""):
                break
            time.sleep(0.02)
        else:
            pytest.fail("server connection was not reset and kept")
    assert len(pids) == 1  # one server connection, reused


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_client_that_does_not_read_costs_no_memory_and_stalls_no_one(start_proxy, mode):
    """Backpressure: while a client leaves a 100 MB answer unread, the proxy stops reading its
    server (memory stays flat) and other clients go on; then every byte arrives."""
    from helios_proxy.protocol import codec
    from .wire import Wire
    proxy = start_proxy(pool={"mode": mode})
    proxy.query("select 1")
    before = rss_mb(proxy.proc.pid)
    slow = Wire(proxy.port, timeout=60)
    slow.startup(user="postgres", database="postgres")
    slow.send(codec.query("select repeat('x', 1000) from generate_series(1, 100000)"))
    time.sleep(1.5)  # the server has sent what the sockets hold; the proxy holds the rest back
    assert [proxy.query(f"select {i}") for i in range(3)] == [[(0,)], [(1,)], [(2,)]]  # neighbours go on
    grown = rss_mb(proxy.proc.pid) - before
    assert grown < 40, f"the proxy grew {grown:.0f} MB for an unread answer"
    rows, last = 0, None
    while last != b"Z":
        last, body = slow.read()
        rows += last == b"D"
    assert rows == 100000
    slow.close()
