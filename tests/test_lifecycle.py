"""Server lifecycle: connection limits, timeouts, signals (SIGTERM, SIGINT, SIGHUP), pool behaviour."""
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time

import psycopg
import psycopg2
import pytest

from .fix_proxy import BIN, ProxyProcess
from .wire import startup_error


def test_max_client_conn_refused_with_53300(start_proxy):
    proxy = start_proxy(server={"max_client_conn": 2})
    held = [proxy.connect(), proxy.connect()]
    with pytest.raises(psycopg2.OperationalError, match="no more connections allowed"):
        proxy.connect()
    error = startup_error(proxy.port, user="postgres", database="postgres")
    assert (error["S"], error["C"]) == ("FATAL", "53300")
    held.pop().close()
    time.sleep(0.2)
    assert proxy.connect().closed == 0


def test_login_timeout_closes_silent_client(start_proxy):
    import socket
    proxy = start_proxy(server={"client_login_timeout": 0.5})
    s = socket.create_connection(("127.0.0.1", proxy.port))
    s.settimeout(5)
    started = time.monotonic()
    data = s.recv(4096)  # we never send a startup packet
    assert time.monotonic() - started < 4
    assert data == b"" or b"timeout" in data


def test_idle_timeout_57P05_but_not_inside_a_transaction(start_proxy):
    proxy = start_proxy(server={"client_idle_timeout": 0.5})
    in_tx = proxy.connect()
    in_tx.cursor().execute("select 1")  # psycopg2 opened a transaction
    idle = psycopg.connect(proxy.dsn(), autocommit=True)
    time.sleep(1.2)
    with pytest.raises(psycopg.OperationalError) as info:
        idle.execute("select 1")
    assert "idle-session timeout" in str(info.value)
    cur = in_tx.cursor()
    cur.execute("select 2")
    assert cur.fetchone()[0] == 2


def test_sigterm_lets_running_queries_finish_and_refuses_new_clients(start_proxy):
    proxy = start_proxy(server={"shutdown_timeout": 10})
    conn = proxy.connect()
    conn.autocommit = True
    result = {}

    def work():
        cur = conn.cursor()
        cur.execute("select pg_sleep(1.5), 'finished'")
        result["row"] = cur.fetchone()
        conn.close()

    t = threading.Thread(target=work)
    t.start()
    time.sleep(0.3)
    proxy.signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(psycopg2.OperationalError):
        proxy.connect()
    t.join()
    assert result["row"][1] == "finished"
    assert proxy.proc.wait(10) == 0


def test_sigterm_closes_sessions_left_after_shutdown_timeout(start_proxy):
    proxy = start_proxy(server={"shutdown_timeout": 0.5})
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    proxy.signal(signal.SIGTERM)
    assert proxy.proc.wait(10) == 0
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")


def test_sigint_is_immediate_with_57P01(start_proxy):
    proxy = start_proxy(server={"shutdown_timeout": 30})
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    result = {}

    def work():
        try:
            conn.execute("select pg_sleep(20)")
        except psycopg.Error as e:
            result["error"] = e

    t = threading.Thread(target=work)
    t.start()
    time.sleep(0.3)
    started = time.monotonic()
    proxy.signal(signal.SIGINT)
    assert proxy.proc.wait(10) == 0
    t.join(10)
    assert time.monotonic() - started < 8
    assert result["error"].sqlstate == "57P01"


def test_sighup_reloads_limits_and_survives_a_bad_file(start_proxy):
    proxy = start_proxy(server={"max_client_conn": 1})
    first = proxy.connect()
    with pytest.raises(psycopg2.OperationalError, match="no more connections"):
        proxy.connect()
    proxy.sections["server"]["max_client_conn"] = 5
    proxy.write_config()
    proxy.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "configuration reloaded" not in proxy.output() and time.time() < deadline:
        time.sleep(0.05)
    second = proxy.connect()
    with open(proxy.config_path, "a") as f:
        f.write("\n[pool]\nmax_size = -3\n")
    proxy.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "reload failed" not in proxy.output() and time.time() < deadline:
        time.sleep(0.05)
    assert "pool.max_size" in proxy.output()
    third = proxy.connect()  # still running with the last good configuration
    for c in (first, second, third):
        c.close()


def test_pool_replaces_a_server_connection_that_died_while_idle(start_proxy, direct):
    proxy = start_proxy(pool={"check_after": 0})
    conn = proxy.connect()
    pid = conn.get_backend_pid()
    conn.close()
    direct.cursor().execute("select pg_terminate_backend(%s)", (pid,))
    time.sleep(0.2)
    again = proxy.connect()
    assert again.get_backend_pid() != pid
    cur = again.cursor()
    cur.execute("select 1")
    assert cur.fetchone()[0] == 1


def test_waiting_for_a_full_pool_times_out_with_a_clear_error(start_proxy):
    proxy = start_proxy(pool={"max_size": 1, "acquire_timeout": 0.5})
    held = proxy.connect()
    started = time.monotonic()
    late = proxy.connect()  # greeted at once (session pooling); its first query waits for a server
    with pytest.raises(psycopg2.OperationalError, match="waiting for a server connection"):
        late.cursor().execute("select 1")
    assert time.monotonic() - started < 5
    held.close()


def test_waiters_get_the_connection_when_it_is_released(start_proxy):
    """Session pooling, pool of one: a second client logs in at once, and its first query waits
    until the first client leaves, then runs on that same server connection."""
    proxy = start_proxy(pool={"max_size": 1})
    held = proxy.connect()
    pid = held.get_backend_pid()
    got = {}

    def wait():
        c = proxy.connect()
        got["login"] = True
        cur = c.cursor()
        cur.execute("select pg_backend_pid()")
        got["pid"] = cur.fetchone()[0]
        c.close()

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.5)
    assert got == {"login": True}
    held.close()
    t.join(10)
    assert got["pid"] == pid


def test_min_size_warms_up_and_idle_timeout_trims(start_proxy, direct):
    proxy = start_proxy(pool={"min_size": 2, "idle_timeout": 0.5, "max_size": 5})
    conns = [proxy.connect(application_name="warm") for _ in range(4)]
    for c in conns:
        c.close()
    cur = direct.cursor()

    def count():
        cur.execute("select count(*) from pg_stat_activity where backend_type = 'client backend' "
                    "and client_port is not null and pid <> pg_backend_pid() and datname = 'postgres' "
                    "and usename = 'postgres' and application_name in ('', 'warm')")  # (before or after reset)
        return cur.fetchone()[0]
    deadline = time.time() + 10
    while count() != 2 and time.time() < deadline:  # (closed backends leave pg_stat_activity late)
        time.sleep(0.2)
    assert count() == 2  # trimmed to min_size
    time.sleep(1.5)      # another round of maintenance: never below min_size
    assert count() == 2


def test_query_timeout_ends_a_client_whose_server_hangs(start_proxy, cluster):
    """A query the server does not answer in pool.query_timeout (here: pg_sleep; a SIGSTOPped
    server is the same to the proxy) ends that client with FATAL 57014; others go on."""
    import psycopg2
    import time
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 3, "query_timeout": 0.5})
    slow = psycopg.connect(proxy.dsn(), autocommit=True)
    other = proxy.connect()
    other.autocommit = True
    started = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled, match="query timeout") as raised:
        slow.execute("select pg_sleep(30)")
    assert raised.value.sqlstate == "57014" and raised.value.diag.severity == "FATAL"
    assert time.monotonic() - started < 5
    assert slow.closed
    cur = other.cursor()
    cur.execute("select pg_sleep(0.1), 1")  # shorter than the timeout: untouched
    assert cur.fetchone()[1] == 1
    d = psycopg2.connect(host="127.0.0.1", port=cluster.primary_port, user="postgres", dbname="postgres")
    d.autocommit = True
    dc = d.cursor()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the sleeping backend was canceled, not left running
        dc.execute("select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")
        if dc.fetchone()[0] == 0:
            break
        time.sleep(0.1)
    assert dc.fetchone() is None and time.monotonic() < deadline
    d.close()


def test_idle_transaction_timeout_frees_the_server(start_proxy):
    import time
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1, "idle_transaction_timeout": 0.5})
    idle = psycopg.connect(proxy.dsn())
    idle.execute("select 1")  # a transaction began: the one server connection is held
    time.sleep(1.5)
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout, match="idle-in-transaction timeout") as raised:
        idle.execute("select 1")
    assert raised.value.sqlstate == "25P03"
    assert proxy.query("select 2") == [(2,)]  # the one server connection was rolled back and reused


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_lone_dead_primary_is_answered_at_once(start_proxy, mode):
    """No standby to fail over to: no 15 s wait in the switchover buffer, PostgreSQL's own
    connection error at once."""
    from helios_proxy.devcluster import free_port
    dead = {"name": "primary", "host": "127.0.0.1", "port": free_port(), "role": "primary"}
    proxy = start_proxy(pool={"mode": mode}, nodes=[dead])
    for _ in range(2):  # before and after the probes noticed
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as raised:
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                conn.execute("select 1")
        assert time.monotonic() - started < 3
        message = str(raised.value)  # (libpq keeps no SQLSTATE for an error at connection time)
        assert "could not connect to server primary" in message or "no standby to fail over to" in message
        assert "failover in progress" not in message
        time.sleep(1.5)


def test_session_mode_logins_beyond_the_pool_are_greeted_and_their_first_query_waits(start_proxy, pgbench):
    """pgbench -c 5 on a session pool of 3: every client logs in at once (pgbench connects them all
    before it starts), the two without a server wait at their first query until one leaves."""
    proxy = start_proxy(pool={"mode": "session", "max_size": 3})
    first = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(3)]
    for conn in first:
        conn.execute("select 1")  # each holds a server for its whole session
    started = time.monotonic()
    late = psycopg.connect(proxy.dsn(), autocommit=True)  # greeted without waiting for a server
    assert time.monotonic() - started < 2
    done = []
    t = threading.Thread(target=lambda: done.append(late.execute("select pg_backend_pid()").fetchone()))
    t.start()
    time.sleep(0.5)
    assert not done  # its first query waits for a server
    first[0].close()
    t.join(10)
    assert done
    late.close()
    for conn in first[1:]:
        conn.close()
    out = pgbench(proxy.port, "simple", 5, 20)
    assert "number of failed transactions: 0" in out


def test_pid_file_and_log_file_like_pgbouncer(start_proxy, tmp_path):
    pid_file, log_file = tmp_path / "helios.pid", tmp_path / "helios.log"
    proxy = start_proxy(server={"pid_file": str(pid_file)}, log={"file": str(log_file)})
    assert int(pid_file.read_text()) == proxy.proc.pid
    assert proxy.query("select 1") == [(1,)]
    assert "listening on" in log_file.read_text()
    second = subprocess.run([BIN, "run", "-c", proxy.config_path], capture_output=True, text=True, timeout=30)
    assert second.returncode != 0 and "server.pid_file" in second.stderr and "running" in second.stderr
    proxy.stop()
    assert not pid_file.exists()


@pytest.fixture
def socket_dir():
    path = tempfile.mkdtemp(prefix="helios-sock-")  # short: a Unix socket path has at most 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unix_socket_like_postgresql_and_pgbouncer(start_proxy, socket_dir, psql_bin, tmp_path):
    proxy = start_proxy(server={"unix_socket_dir": socket_dir, "unix_socket_mode": "0770"},
                        admin={"users": ["postgres"]})
    path = os.path.join(socket_dir, f".s.PGSQL.{proxy.port}")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o770
    conn = psycopg2.connect(host=socket_dir, port=proxy.port, user="postgres", dbname="postgres")
    cur = conn.cursor()
    cur.execute("select 1")
    assert cur.fetchone() == (1,)
    out = subprocess.run([psql_bin, "-h", socket_dir, "-p", str(proxy.port), "-U", "postgres", "-d", "helios",
                          "-AtX", "-c", "SHOW CLIENTS"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "[local]" in out.stdout, out.stderr
    other = tmp_path / "second.toml"  # another address, the same port: the same socket file
    other.write_text(open(proxy.config_path).read().replace(f"127.0.0.1:{proxy.port}", f"127.0.0.2:{proxy.port}")
                     .replace("[admin]", "[admin]\nenabled = false"))
    second = subprocess.run([BIN, "run", "-c", str(other)], capture_output=True, text=True, timeout=30)
    assert second.returncode != 0 and "server.unix_socket_dir" in second.stderr and "in use" in second.stderr
    assert os.path.exists(path)  # (the second start left the first one's socket alone)
    conn.close()
    proxy.stop()
    assert not os.path.exists(path)


def test_unix_socket_shared_by_workers(cluster, tmp_path, socket_dir):
    from .test_workers import wait_workers
    p = ProxyProcess(str(tmp_path), cluster, server={"workers": 2, "unix_socket_dir": socket_dir},
                     pool={"mode": "transaction", "max_size": 2})
    p.start()
    try:
        wait_workers(p)
        conns = [psycopg2.connect(host=socket_dir, port=p.port, user="postgres", dbname="postgres")
                 for _ in range(12)]
        for i, conn in enumerate(conns):
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("select %s", (i,))
            assert cur.fetchone() == (i,)
        status, sessions = p.api("GET", "/sessions")
        assert status == 200 and {s["addr"] for s in sessions} == {"[local]"} and len(sessions) == 12
        for conn in conns:
            conn.close()
    finally:
        p.stop()
    assert not os.listdir(socket_dir)
