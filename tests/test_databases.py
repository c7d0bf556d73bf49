"""[databases.NAME] as PgBouncer users write them: an alias (dbname) and a server of its own (host, port)."""
import subprocess
import threading
import time

import psycopg2
import pytest

from helios_proxy.devcluster import free_port


def one(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    return cur.fetchone()[0]


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_alias_and_database_on_a_host_of_its_own(start_proxy, cluster, psql_bin, mode):
    standby_port = cluster.ports[1]
    proxy = start_proxy(pool={"mode": mode}, admin={"users": ["postgres"], "sql_enabled": True},
                        databases={"main": {"dbname": "app"},
                                   "reports": {"host": "127.0.0.1", "port": standby_port, "dbname": "postgres"}})
    for _ in range(2):  # the first login opens the pool, the second is greeted from its parameters
        main = proxy.connect(dbname="main")
        main.autocommit = True
        assert one(main, "select current_database()") == "app"
        assert one(main, "select pg_is_in_recovery()") is False  # the cluster's primary
        reports = proxy.connect(dbname="reports")
        reports.autocommit = True
        assert one(reports, "select current_database()") == "postgres"
        assert one(reports, "select inet_server_port()") == standby_port  # all its traffic goes there
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):  # writes too: no routing for it
            reports.cursor().execute("create table t_reports(i int)")
        main.close()
        reports.close()
    rows = {r[0]: r for r in proxy_console(psql_bin, proxy, "SHOW DATABASES")}
    assert rows["main"][1:4] == ["127.0.0.1", str(cluster.primary_port), "app"]
    assert rows["reports"][1:4] == ["127.0.0.1", str(standby_port), "postgres"]
    status, body = proxy.api("POST", "/api/sql", {"sql": "select inet_server_port()", "database": "reports"})
    assert status == 200 and body["rows"] == [[str(standby_port)]], body


def proxy_console(psql_bin, proxy, sql):
    out = subprocess.run([psql_bin, "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "postgres", "-d", "helios",
                          "-AtX", "-c", sql], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return [line.split("|") for line in out.stdout.splitlines()]


def test_a_database_whose_host_is_down_fails_at_once_and_others_go_on(start_proxy):
    proxy = start_proxy(databases={"gone": {"host": "127.0.0.1", "port": free_port()}})
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="refused"):
        proxy.connect(dbname="gone")
    assert time.monotonic() - started < 5  # PostgreSQL's connection error, not the failover buffer's wait
    assert proxy.query("select 1") == [(1,)]


def console(proxy):
    conn = psycopg2.connect(host="127.0.0.1", port=proxy.port, user="postgres", dbname="helios", connect_timeout=10)
    conn.autocommit = True
    return conn


def in_thread(fn, *args):
    """Run fn in a thread: (thread, result list that holds its value or exception when done)."""
    out = []

    def run():
        try:
            out.append(fn(*args))
        except Exception as e:  # noqa: BLE001 (handed to the test)
            out.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_suspend_flushes_answers_holds_everything_and_resume_goes_on(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction"}, admin={"users": ["postgres"]})
    admin = console(proxy)
    client = proxy.connect()
    client.autocommit = True
    started = time.monotonic()
    busy, slow = in_thread(one, client, "select 'slept' from pg_sleep(0.6)")
    time.sleep(0.2)
    admin.cursor().execute("SUSPEND")
    assert time.monotonic() - started >= 0.6  # SUSPEND returned once the answer under way went out...
    busy.join(5)
    assert slow == ["slept"]  # ... to its client (its thread may take a moment to read it on a busy machine)
    held, later = in_thread(one, client, "select 2")
    newcomer, login = in_thread(lambda: one(proxy.connect(), "select 3"))
    held.join(0.7)
    newcomer.join(0.1)
    assert later == [] and login == []  # nothing moves while suspended: no query, no login
    admin.cursor().execute("RESUME")
    held.join(10)
    newcomer.join(10)
    assert later == [2] and login == [3]


def test_reconnect_and_wait_close(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction"}, admin={"users": ["postgres"]})
    admin = console(proxy)
    client = proxy.connect()
    client.autocommit = True
    before = one(client, "select pg_backend_pid()")
    cur = client.cursor()
    cur.execute("begin")
    cur.execute("select 1")  # holds its server connection
    admin.cursor().execute("RECONNECT postgres")
    assert admin.notices and "1 server connection(s) close when released" in admin.notices[-1]
    servers = admin.cursor()
    servers.execute("SHOW SERVERS")
    names = [d[0] for d in servers.description]
    assert [r[names.index("close_needed")] for r in servers.fetchall()] == ["1"]
    waiting, done = in_thread(lambda: admin.cursor().execute("WAIT_CLOSE"))
    waiting.join(0.5)
    assert done == []  # the connection is still in its transaction
    cur.execute("commit")
    waiting.join(10)
    assert done == [None]
    assert one(client, "select pg_backend_pid()") != before  # a new connection


def test_a_reload_that_changes_dbname_applies_to_the_next_transaction(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction"}, databases={"main": {"dbname": "app"}},
                        admin={"users": ["postgres"]})
    client = proxy.connect(dbname="main")
    cur = client.cursor()
    cur.execute("select current_database()")
    assert cur.fetchone()[0] == "app"  # (its transaction stays open over the reload)
    proxy.sections["databases"]["main"]["dbname"] = "postgres"
    proxy.write_config()
    assert proxy.api("POST", "/reload")[0] == 200
    cur.execute("select current_database()")
    assert cur.fetchone()[0] == "app"
    client.commit()
    cur.execute("select current_database()")
    assert cur.fetchone()[0] == "postgres"
    client.commit()
    admin = console(proxy)
    admin.cursor().execute("WAIT_CLOSE main")  # the connections to app are gone
    servers = admin.cursor()
    servers.execute("SHOW SERVERS")
    names = [d[0] for d in servers.description]
    assert all(r[names.index("close_needed")] == "0" for r in servers.fetchall())


def test_a_suspend_whose_console_closed_is_resumed_through_rest_and_health_says_so(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction"}, admin={"users": ["postgres"]})
    admin = console(proxy)
    admin.cursor().execute("SUSPEND")
    admin.close()  # (the only console is gone: nothing else can get in now)
    status, health = proxy.api("GET", "/health")
    assert health["status"] == "suspended" and health["suspended"] is True
    newcomer, login = in_thread(lambda: one(proxy.connect(), "select 3"))
    newcomer.join(0.5)
    assert login == []
    status, body = proxy.api("POST", "/resume", {})
    assert status == 200, body
    newcomer.join(10)
    assert login == [3]
    assert proxy.api("GET", "/health")[1]["status"] == "ok"
    assert proxy.api("POST", "/resume", {})[0] == 409  # (nothing left to resume)


def test_sigusr1_pauses_and_sigusr2_resumes_as_pgbouncer(start_proxy):
    import signal
    proxy = start_proxy(pool={"mode": "transaction"})
    client = proxy.connect()
    client.autocommit = True
    proxy.signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while proxy.api("GET", "/health")[1]["status"] != "paused":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    held, later = in_thread(one, client, "select 2")
    held.join(0.5)
    assert later == []  # a new transaction waits
    proxy.signal(signal.SIGUSR2)
    held.join(10)
    assert later == [2] and proxy.api("GET", "/health")[1]["paused"] == []


def test_pgbouncer_console_commands(start_proxy, psql_bin):
    proxy = start_proxy(pool={"mode": "transaction"}, admin={"users": ["postgres"]})
    client = proxy.connect()
    client.autocommit = True
    assert one(client, "select 1") == 1
    rows = lambda sql: proxy_console(psql_bin, proxy, sql)  # noqa: E731
    lists = dict(rows("SHOW LISTS"))
    assert int(lists["used_clients"]) >= 1 and int(lists["pools"]) >= 1
    assert ["postgres", "transaction"] in rows("SHOW USERS")
    assert any(r[0].startswith("process") and int(r[1]) > 0 for r in rows("SHOW MEM"))
    assert any(r[1] == "client" and r[2] == "postgres" for r in rows("SHOW FDS"))
    assert any(r[0] == "server" for r in rows("SHOW SOCKETS"))
    totals = dict(rows("SHOW TOTALS"))
    assert int(totals["total_query_count"]) >= 1 and "avg_query_count" in totals
    assert dict(rows("SHOW STATE"))["suspended"] == "no"
    pools = proxy.api("GET", "/pools")[1]
    assert {"sv_used", "sv_login", "maxwait_us", "pool_mode"} <= set(pools[0])
    assert {"avg_xact_count", "avg_query_count", "avg_recv", "avg_sent"} <= set(proxy.api("GET", "/stats")[1][0])
    rows("SET default_pool_size = 7")  # a reloadable setting, by PgBouncer's name
    assert proxy.api("GET", "/config")[1]["pool"]["max_size"] == 7
    rows("DISABLE app")
    with pytest.raises(psycopg2.OperationalError, match="not currently accepting connections"):
        proxy.connect(dbname="app")
    assert dict(rows("SHOW STATE"))["disabled"] == "app"
    rows("ENABLE app")
    proxy.connect(dbname="app").close()
    me = [r for r in rows("SHOW CLIENTS") if r[1] == "postgres" and r[2] == "postgres"]
    rows(f"KILL_CLIENT {me[0][0]}")
    with pytest.raises(psycopg2.Error):
        one(client, "select 1")
    rows("KILL app")  # PgBouncer's KILL: the database stays paused until RESUME
    assert dict(rows("SHOW STATE"))["paused"] == "app"
    rows("RESUME app")
    proxy.connect(dbname="app").close()
    rows("SHUTDOWN")
    proxy.proc.wait(20)
    assert proxy.proc.returncode == 0
