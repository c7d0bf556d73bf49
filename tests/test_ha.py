"""High availability on a real primary + sync standby1 + async standby2 (tests/fix_ha.py): health,
the primary tracker, automatic failover, the switchover buffer and planned switchover."""
import os
import re
import subprocess
import sys
import threading
import time

import psycopg2
import pytest

from helios_proxy.devcluster import free_port
from tests.background import Background
from tests.fix_etcd import etcd  # noqa: F401 - a fixture
from tests.fix_ha import ha_nodes, query

HELIOS = os.path.join(os.path.dirname(sys.executable), "helios-proxy")
FAST_HEALTH = {"interval": 0.2, "timeout": 1.0, "failure_threshold": 3, "success_threshold": 1}


def start_ha_proxy(start_proxy, cluster, mode="transaction", failover=None, pool=None, **sections):
    sections.setdefault("health", FAST_HEALTH)
    return start_proxy(pool={"mode": mode, "max_size": 10, **(pool or {})}, nodes=ha_nodes(cluster),
                       failover={"mode": "promote", **(failover or {})}, **sections)


def in_recovery(port):
    return query(port, "SELECT pg_is_in_recovery()")[0][0]


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except psycopg2.Error:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Load:
    """Writers inserting unique ids through the proxy (autocommit) and one reader, in threads."""

    def __init__(self, proxy, writers=4, base=0):
        """base: the first id (several loads at once write different ids)."""
        self.proxy, self.stop, self.base = proxy, threading.Event(), base
        self.acked, self.errors, self.reads = [], [], 0
        self.acked_at = []  # time.monotonic() of each acknowledgement, in order
        self.first_ok_after = None
        self.kill_at = None
        self.threads = [threading.Thread(target=self.write, args=(w,)) for w in range(writers)]
        self.threads.append(threading.Thread(target=self.read))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def write(self, w):
        i, conn = self.base + w * 10_000_000, None
        while not self.stop.is_set():
            started = time.time()
            try:
                if conn is None:
                    conn = self.proxy.connect()
                    conn.autocommit = True
                conn.cursor().execute("INSERT INTO ha_rows (id) VALUES (%s)", (i,))
                self.acked.append(i)
                self.acked_at.append(time.monotonic())
                if self.kill_at and started > self.kill_at and self.first_ok_after is None:
                    self.first_ok_after = time.time() - self.kill_at
            except psycopg2.Error as e:
                self.errors.append((time.time(), e.pgcode, str(e).strip()))
                try:
                    conn.close()
                except Exception:
                    pass
                conn = None
                time.sleep(0.05)
            i += 1

    def read(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self.proxy.connect()
                    conn.autocommit = True
                conn.cursor().execute("SELECT count(*) FROM pg_class")
                self.reads += 1
            except psycopg2.Error:
                conn = None
                time.sleep(0.05)


def out_of_date(cluster):
    """[[nodes]] as before a failover: standby1 (a standby) named the primary, primary a standby."""
    nodes = ha_nodes(cluster)
    nodes[0]["role"], nodes[1]["role"] = "standby", "primary"
    return nodes


class Write:
    """An autocommit INSERT through the proxy (its login too) in a thread: the proxy may make both wait."""

    def __init__(self, proxy, i):
        self.got = []
        self.thread = threading.Thread(target=self.run, args=(proxy, i), daemon=True)
        self.thread.start()

    def run(self, proxy, i):
        try:
            conn = proxy.connect()
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("INSERT INTO ha_rows (id) VALUES (%s) RETURNING inet_server_port()", (i,))
            self.got.append(cur.fetchone()[0])
            conn.close()
        except psycopg2.Error as e:
            self.got.append(e)

    def waits(self, seconds):
        self.thread.join(seconds)
        return self.thread.is_alive()


def test_failover_promotes_the_sync_standby_and_loses_no_acknowledged_write(start_proxy, ha_cluster):
    proxy = start_ha_proxy(start_proxy, ha_cluster)
    with Load(proxy) as load:
        time.sleep(2)
        ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(0), "-m", "immediate", "stop")
        load.kill_at = time.time()
        wait_for(lambda: load.first_ok_after is not None, 30, "a write after the primary died")
        reads_after = load.reads
        time.sleep(1)
        assert load.reads > reads_after  # reads kept flowing
    print(f"writes resumed {load.first_ok_after:.2f} s after the kill; {len(load.errors)} errors")
    assert load.first_ok_after < 10
    # The documented rule: the standby with the most WAL is promoted, the synchronous one among
    # equals (under load the asynchronous one may have received more: it holds every acknowledged
    # commit too, and the other can follow it). Checked against the positions the proxy saw.
    status, topo = proxy.api("GET", "/topology")
    new, other = (1, 2) if topo["primary"] == "standby1" else (2, 1)
    chose = re.search(r"failover: chose (\w+) \(.*?\) out of (.*)", proxy.output())
    seen = re.findall(r"(\w+) \[lsn (\d+) (sync|async)\]", chose.group(2))
    assert len(seen) == 2, chose.group(0)
    best = max(int(lsn) for _, lsn, _ in seen)
    rightful = [name for name, lsn, kind in sorted(seen, key=lambda x: x[2] != "sync") if int(lsn) == best][0]
    assert chose.group(1) == rightful == f"standby{new}", chose.group(0)
    assert topo["primary"] == f"standby{new}" and topo["state"] == "CONFIRMED" and topo["failovers"] == 1
    assert not in_recovery(ha_cluster.ports[new]) and in_recovery(ha_cluster.ports[other])
    present = {r[0] for r in query(ha_cluster.ports[new], "SELECT id FROM ha_rows")}
    lost = [i for i in load.acked if i not in present]
    assert len(load.acked) > 100 and not lost, (len(load.acked), lost[:5])
    # writes go to the new primary
    assert proxy.query("INSERT INTO ha_rows (id) VALUES (-1) RETURNING inet_server_port()") == \
        [(ha_cluster.ports[new],)]
    # the other standby follows the new primary
    wait_for(lambda: query(ha_cluster.ports[new], "SELECT count(*) FROM pg_stat_replication "
                                                  f"WHERE application_name = 'standby{other}' AND state = "
                                                  "'streaming'")[0][0] == 1,
             30, f"standby{other} streaming from standby{new}")
    wait_for(lambda: query(ha_cluster.ports[other], "SELECT count(*) FROM ha_rows WHERE id = -1")[0][0] == 1,
             30, f"standby{other} replaying the new primary's writes")
    assert topo["history"][0]["kind"] == "failover"
    # every error a client saw says what happened
    for _, code, message in load.errors:  # (libpq drops the SQLSTATE of a FATAL error right before EOF at times)
        # (08007: an autocommit write in flight at the kill, replay on: its outcome cannot be known)
        assert code in ("08006", "08007", "57P03", "57P01") or "server closed the connection" in message, \
            (code, message)


def test_planned_switchover_under_pgbench_has_no_client_errors(start_proxy, ha_cluster):
    subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(ha_cluster.ports[0]), "-U", "postgres", "-i", "-s",
                    "1", "-q", "postgres"], check=True, capture_output=True, timeout=120)
    proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"fence_command": (
        f"pg_ctl -D {ha_cluster.datadir(0)} -m fast -w stop" if os.geteuid() != 0 else
        f"su postgres -c '{ha_cluster.bin}/pg_ctl -D {ha_cluster.datadir(0)} -m fast -w stop'")})
    bench = subprocess.Popen(["pgbench", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "postgres", "-c", "4",
                              "-j", "2", "-T", "8", "-P", "1", "postgres"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    done = subprocess.run([HELIOS, "switchover", "standby1", "-c", proxy.config_path], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out, err = bench.communicate(timeout=60)
    assert bench.returncode == 0, err
    assert "number of failed transactions: 0" in out
    assert "error" not in err.lower(), err
    print(done.stdout)
    assert not in_recovery(ha_cluster.ports[1])
    status, nodes = proxy.api("GET", "/nodes")
    by_name = {n["name"]: n for n in nodes}
    assert by_name["standby1"]["primary"] and by_name["primary"]["fenced"]
    assert proxy.query("UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1 "
                              "RETURNING inet_server_port()") == [(ha_cluster.ports[1],)]


def test_switchover_refuses_bad_targets_with_clear_errors(start_proxy, ha_cluster):
    proxy = start_ha_proxy(start_proxy, ha_cluster)
    assert proxy.api("POST", "/switchover", {"target": "nope"}) == (404, {"error": "no node 'nope'"})
    status, body = proxy.api("POST", "/switchover", {"target": "primary"})
    assert status == 409 and "primary already" in body["error"]
    assert proxy.api("POST", "/switchover", {})[0] == 400
    assert proxy.api("POST", "/switchover", {"target": "standby1"}, token="wrong")[0] == 401
    done = subprocess.run([HELIOS, "switchover", "nope", "-c", proxy.config_path], capture_output=True, text=True)
    assert done.returncode == 1 and "no node 'nope'" in done.stderr


def test_promotion_outside_the_proxy_is_followed_and_the_old_primary_gets_no_writes(start_proxy, ha_cluster):
    proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"mode": "external"})
    proxy.query("CREATE SEQUENCE ha_ids")
    ha_cluster.wait_replayed()
    ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(2), "-w", "promote")
    started = time.monotonic()

    def writes_to_standby2():
        return proxy.query("INSERT INTO ha_rows (id) VALUES (nextval('ha_ids')) "
                                  "RETURNING inet_server_port()") == [(ha_cluster.ports[2],)]
    wait_for(writes_to_standby2, 10, "writes on the node promoted outside the proxy")
    assert time.monotonic() - started < 5
    assert "claims primary" in proxy.output() or "promoted outside the proxy" in proxy.output()
    status, nodes = proxy.api("GET", "/nodes")
    assert {n["name"]: n["stale"] for n in nodes}["primary"]  # the old primary, still running, is out


def test_all_nodes_down_gives_clear_errors_and_recovers(start_proxy, ha_cluster):
    proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"mode": "external", "buffer_timeout": 1.0})
    conn = proxy.connect()
    conn.autocommit = True
    ha_cluster.stop()
    with pytest.raises(psycopg2.Error) as info:
        conn.cursor().execute("INSERT INTO ha_rows (id) VALUES (1)")
    assert info.value.pgcode in ("57P03", "08006")
    started = time.monotonic()
    with pytest.raises(psycopg2.Error) as info:
        c = proxy.connect()
        c.autocommit = True
        c.cursor().execute("INSERT INTO ha_rows (id) VALUES (1)")
    assert time.monotonic() - started < 5  # bounded by buffer_timeout, not a hang
    # while a standby still looked healthy: the buffer's 57P03; once none does, at once 08006
    assert (info.value.pgcode == "57P03" and "failover in progress" in str(info.value)
            or info.value.pgcode == "08006" and "no standby to fail over to" in str(info.value)), info.value
    ha_cluster.start()
    wait_for(lambda: proxy.query("INSERT INTO ha_rows (id) VALUES (2) RETURNING id") == [(2,)], 20,
             "writes after the cluster came back")
    assert proxy.query("SELECT inet_server_port()")[0][0] in ha_cluster.ports


def test_writes_waiting_for_a_failover_that_can_no_longer_come_get_08006_at_once(start_proxy, ha_cluster):
    """The primary is down and nothing promotes (failover.mode = external): writes wait in the
    switchover buffer for an operator or Patroni. Once the last standby is down too, no failover
    can come: the writes already waiting get 08006 then, as a new arrival does, not 57P03 after
    failover.buffer_timeout."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"mode": "external", "buffer_timeout": 60.0})
    conns = [proxy.connect() for _ in range(2)]  # (logged in: their writes wait, not their logins)
    for conn in conns:
        conn.autocommit = True
    ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(0), "-m", "immediate", "stop")
    wait_for(lambda: proxy.get("/topology")["state"] != "CONFIRMED", 20, "the primary unhealthy")
    got = []

    def write(conn, i):
        try:
            conn.cursor().execute("INSERT INTO ha_rows (id) VALUES (%s)", (i,))
            got.append(None)
        except psycopg2.Error as e:
            got.append(e)
    writes = [threading.Thread(target=write, args=(conn, i), daemon=True) for i, conn in enumerate(conns)]
    for w in writes:
        w.start()
    wait_for(lambda: proxy.get("/topology")["buffer"]["waiting"] == 2, 20, "both writes in the buffer")
    time.sleep(1.0)
    assert got == []  # (still waiting: the standbys could be promoted)
    for i in (1, 2):
        ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(i), "-m", "immediate", "stop")
    stopped = time.monotonic()
    for w in writes:
        w.join(20)
    assert time.monotonic() - stopped < 20, "a write still waits for a failover that cannot come"
    assert [e.pgcode for e in got] == ["08006", "08006"], got
    assert all("no standby to fail over to" in str(e) for e in got)


def test_primary_restart_is_buffered_without_client_errors(start_proxy, ha_cluster):
    """A fast restart of the primary: clients between transactions wait instead of failing."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"mode": "external"})
    with Load(proxy, writers=2) as load:
        time.sleep(1)
        errors_before = len(load.errors)
        ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(0), "-l", ha_cluster.datadir(0) + ".log", "-m", "fast",
                        "-w", "restart", "-o", f"-p {ha_cluster.ports[0]} -k {ha_cluster.base}")
        restarted = len(load.acked)
        wait_for(lambda: len(load.acked) > restarted + 50, 20, "writes after the restart")
    # a client whose statement was running at the shutdown gets 57P01; everyone else just waits
    assert len(load.errors) - errors_before <= 2, load.errors
    assert in_recovery(ha_cluster.ports[1]) and in_recovery(ha_cluster.ports[2])  # nobody was promoted


def test_flapping_standby_costs_only_the_queries_running_on_it(start_proxy, ha_cluster):
    """A standby stopped and started three times: only queries running on it when it dies fail
    (cleanly, 08006; the transaction-replay issue may recover them); every other read goes on."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"mode": "external"})
    failures, reads, done = [], [0], threading.Event()

    def reader():
        conn = proxy.connect()
        conn.autocommit = True
        while not done.is_set():
            try:
                conn.cursor().execute("SELECT pg_sleep(0.01)")
                reads[0] += 1
            except psycopg2.Error as e:
                failures.append(e.pgcode)
                conn = proxy.connect()
                conn.autocommit = True
    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(2), "-m", "immediate", "stop")
            time.sleep(0.5)
            ha_cluster._start(2)
            time.sleep(0.5)
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert len(failures) <= 3 * 3 and set(failures) <= {"08006"}, failures
    assert reads[0] > 100
    assert "node standby2 is unhealthy" in proxy.output()


def test_operator_disable_and_enable_a_standby(start_proxy, ha_cluster):
    proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"mode": "external"})
    status, view = proxy.api("POST", "/nodes/standby2/disable", {"reason": "maintenance"})
    assert status == 200 and view["fenced"] == "maintenance"
    ports = {proxy.query("SELECT inet_server_port()")[0][0] for _ in range(20)}
    assert ports == {ha_cluster.ports[1]}
    proxy.api("POST", "/nodes/standby2/enable")
    ports = {proxy.query("SELECT inet_server_port()")[0][0] for _ in range(20)}
    assert ports == {ha_cluster.ports[1], ha_cluster.ports[2]}
    assert proxy.api("POST", "/nodes/standby2/disable", token=None)[0] == 403 or \
        proxy.api("POST", "/nodes/standby2/disable", token=None)[0] == 401


def test_patroni_provider_follows_the_leader_patroni_reports(start_proxy, ha_cluster):
    """Patroni itself is not installed here: a small HTTP server answers GET /cluster in Patroni's
    documented format while the test does what Patroni would (pg_ctl promote)."""
    import http.server
    import json
    members = {"members": [
        {"name": "primary", "role": "leader", "state": "running", "host": "127.0.0.1", "port": ha_cluster.ports[0]},
        {"name": "standby1", "role": "sync_standby", "state": "streaming", "host": "127.0.0.1",
         "port": ha_cluster.ports[1]},
        {"name": "standby2", "role": "replica", "state": "streaming", "host": "127.0.0.1",
         "port": ha_cluster.ports[2]}]}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(members).encode() if self.path == "/cluster" else b"{}"
            self.send_response(200 if self.path == "/cluster" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    try:
        proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"mode": "external"},
                               topology={"provider": "patroni",  # (a member that is down first: any answers)
                                         "patroni_url": f"http://127.0.0.1:{free_port()},"
                                                        f"http://127.0.0.1:{api.server_address[1]}"})
        assert proxy.query("INSERT INTO ha_rows (id) VALUES (1) RETURNING inet_server_port()") == \
            [(ha_cluster.ports[0],)]
        # Patroni reports the lock's holder as leader before it promotes it: writes wait meanwhile
        # (they would fail with 25006 there), and go there once it answers as primary
        members["members"][0]["role"], members["members"][1]["role"] = "replica", "leader"
        wait_for(lambda: proxy.get("/topology")["primary"] == "standby1", 10, "Patroni's new leader named")
        write = Write(proxy, 3)
        assert write.waits(1.0) and proxy.get("/topology")["state"] == "PENDING", write.got
        ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(1), "-w", "promote")
        assert not write.waits(30) and write.got == [ha_cluster.ports[1]], write.got
        assert proxy.query("/*+ route=primary */ SELECT inet_server_port()") == [(ha_cluster.ports[1],)]
    finally:
        api.shutdown()


def test_a_standby_busy_during_failover_still_follows_the_new_primary(start_proxy, ha_cluster):
    """The other standbys are repointed until they stream from the new primary: a standby that
    could not answer at the moment of the failover (here: its postmaster stopped for a few seconds,
    as a loaded machine may delay it) follows the new primary once it answers again."""
    import signal
    proxy = start_ha_proxy(start_proxy, ha_cluster)
    assert proxy.query("select 1") == [(1,)]
    with open(os.path.join(ha_cluster.datadir(2), "postmaster.pid")) as f:
        standby2 = int(f.readline())
    os.kill(standby2, signal.SIGSTOP)
    try:
        ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(0), "-m", "immediate", "stop")
        wait_for(lambda: not in_recovery(ha_cluster.ports[1]), 30, "standby1 promoted")
        time.sleep(4)  # longer than health.timeout: the first repoint of standby2 failed
    finally:
        os.kill(standby2, signal.SIGCONT)
    proxy.query("INSERT INTO ha_rows (id) VALUES (-7)")
    wait_for(lambda: query(ha_cluster.ports[1], "SELECT count(*) FROM pg_stat_replication "
                                                "WHERE application_name = 'standby2'")[0][0] == 1,
             40, "standby2 streaming from standby1")
    wait_for(lambda: query(ha_cluster.ports[2], "SELECT count(*) FROM ha_rows WHERE id = -7")[0][0] == 1,
             30, "standby2 replaying the new primary's writes")


def test_query_timeout_bounds_writes_on_a_hung_primary(start_proxy, ha_cluster):
    """Every PostgreSQL process of the primary stopped (SIGSTOP): an in-flight write is ended by
    pool.query_timeout with FATAL 57014 instead of waiting on the hung server without bound."""
    import signal
    import psycopg
    proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"mode": "external"}, pool={"query_timeout": 1.0})
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    conn.execute("INSERT INTO ha_rows (id) VALUES (-11)")
    with open(os.path.join(ha_cluster.datadir(0), "postmaster.pid")) as f:
        postmaster = int(f.readline())
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True,
                                                 text=True).stdout.split()]
    stopped = [postmaster] + children
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="query timeout"):
            conn.execute("INSERT INTO ha_rows (id) VALUES (-12)")
        assert time.monotonic() - started < 10
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        conn.close()


def test_session_mode_switchover_moves_idle_clients_with_their_settings_and_statements(start_proxy, ha_cluster):
    """Session pooling: clients between transactions move to the new primary unnoticed (settings
    and prepared statements, protocol- and SQL-level, re-created); only one inside a transaction
    is ended after switchover_timeout."""
    import psycopg
    proxy = start_ha_proxy(start_proxy, ha_cluster, mode="session", failover={"switchover_timeout": 2.0})
    idle = []
    for i in range(3):
        conn = psycopg.connect(proxy.dsn(), autocommit=True, prepare_threshold=0)
        conn.execute(f"set application_name = 'moved{i}'")
        conn.execute("select count(*) from ha_rows where id > %s", (i,))  # a protocol-level statement
        conn.execute(f"prepare mine{i} as select {i} + $1::int")
        idle.append(conn)
    busy = psycopg.connect(proxy.dsn())
    busy.execute("select 1")  # a transaction left open
    status, out = proxy.api("POST", "/switchover", {"target": "standby1"})
    assert status == 200, out
    for i, conn in enumerate(idle):
        row = conn.execute("select inet_server_port(), current_setting('application_name')").fetchone()
        assert row == (ha_cluster.ports[1], f"moved{i}")
        assert conn.execute("select count(*) from ha_rows where id > %s", (i,)).fetchone()[0] >= 0
        assert conn.execute(f"execute mine{i}(40)").fetchone() == (i + 40,)
        conn.close()
    with pytest.raises(psycopg.OperationalError):
        busy.execute("select 1")
    assert out["sessions_ended"] == 1


def test_a_switchover_waits_for_a_batched_insert_under_way_and_the_new_primary_has_it(start_proxy, ha_cluster):
    """A batch of INSERTs (batch/) running on the old primary when a switchover starts is waited
    for like a session's transaction: its client's INSERT 0 1 is a row the new primary has."""
    with psycopg2.connect(host="127.0.0.1", port=ha_cluster.ports[0], user="postgres", dbname="postgres") as c:
        c.autocommit = True
        c.cursor().execute(  # (a statement trigger: the batch runs 1.5 s, and it is batchable)
            "CREATE TABLE ha_slow (x int); "
            "CREATE FUNCTION ha_slowly() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END$$; "
            "CREATE TRIGGER ha_slowly AFTER INSERT ON ha_slow FOR EACH STATEMENT EXECUTE FUNCTION ha_slowly()")
    c.close()
    proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"switchover_timeout": 10.0},
                           batch={"enabled": True, "tables": ["ha_slow"]})
    conn = proxy.connect()
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("select 1")
    running = Background(cur, "insert into ha_slow (x) values (7)", fetch=False)
    time.sleep(0.4)  # (under way on the old primary: in its trigger's sleep)
    status, out = proxy.api("POST", "/switchover", {"target": "standby1"})
    assert status == 200, out
    assert running.join(10) and running.got == ["INSERT 0 1"], running.got
    assert proxy.api("GET", "/batch")[1]["rows"] == 1
    assert not in_recovery(ha_cluster.ports[1])
    assert query(ha_cluster.ports[1], "SELECT count(*) FROM ha_slow WHERE x = 7") == [(1,)]
    conn.close()


def test_session_mode_switchover_ends_a_client_whose_state_cannot_move(start_proxy, ha_cluster):
    import psycopg
    proxy = start_ha_proxy(start_proxy, ha_cluster, mode="session", failover={"switchover_timeout": 1.0})
    listener = psycopg.connect(proxy.dsn(), autocommit=True)
    listener.execute("listen somewhere")  # notifications would be lost on another connection
    status, out = proxy.api("POST", "/switchover", {"target": "standby1"})
    assert status == 200 and out["sessions_ended"] == 1, out
    with pytest.raises(psycopg.OperationalError):
        listener.execute("select 1")


def test_patroni_through_its_dcs_the_leader_key_in_etcd_moves_the_proxy_at_once(start_proxy, ha_cluster, etcd):
    """The proxy watches Patroni's keys in a real etcd (written here as Patroni writes them, while
    the test promotes as Patroni would): a new leader key moves its writes within a moment, no
    polling; a leader key gone (its lock expired) makes writes wait; etcd gone keeps the primary."""
    import json
    prefix = "/service/pgcluster/"

    def member(i, role):
        etcd.put(f"{prefix}members/{'primary' if i == 0 else f'standby{i}'}", json.dumps(
            {"conn_url": f"postgres://127.0.0.1:{ha_cluster.ports[i]}/postgres", "role": role,
             "state": "running"}))
    member(0, "master"), member(1, "replica"), member(2, "replica")
    etcd.put(f"{prefix}leader", "primary")
    proxy = start_ha_proxy(start_proxy, ha_cluster, failover={"mode": "external"},
                           topology={"provider": "patroni", "dcs_url": etcd.url, "scope": "pgcluster"})
    wait_for(lambda: proxy.api("GET", "/topology")[1]["primary"] == "primary", 10, "the leader from etcd")
    assert proxy.query("INSERT INTO ha_rows (id) VALUES (11) RETURNING inet_server_port()") == \
        [(ha_cluster.ports[0],)]
    ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(1), "-w", "promote")
    member(1, "master"), member(0, "replica")
    put_at = time.monotonic()
    etcd.put(f"{prefix}leader", "standby1")
    wait_for(lambda: proxy.api("GET", "/topology")[1]["primary"] == "standby1", 10, "the new leader")
    followed = time.monotonic() - put_at
    print(f"the proxy named the new leader {followed:.3f} s after etcd had it")
    assert followed < 2.0  # (measured ~0.01-0.05 s: a watch, not the 0.2 s health interval's polling)
    assert proxy.query("INSERT INTO ha_rows (id) VALUES (12) RETURNING inet_server_port()") == \
        [(ha_cluster.ports[1],)]
    etcd.delete(f"{prefix}leader")  # the leader lost: no primary until Patroni elects one
    wait_for(lambda: proxy.api("GET", "/topology")[1]["state"] == "NONE", 10, "no primary")
    etcd.put(f"{prefix}leader", "standby1")
    wait_for(lambda: proxy.api("GET", "/topology")[1]["state"] == "CONFIRMED", 10, "the leader again")
    assert proxy.api("GET", "/topology")[1]["primary"] == "standby1"
    etcd.stop()  # the DCS gone: the proxy keeps serving the primary it knows
    time.sleep(1.0)
    assert proxy.query("INSERT INTO ha_rows (id) VALUES (13) RETURNING inet_server_port()") == \
        [(ha_cluster.ports[1],)]
    assert "etcd" in proxy.output() and "unreachable" in proxy.output()


def test_a_configured_primary_that_is_a_standby_now_gets_no_write_the_probes_decide_first(start_proxy,
                                                                                          ha_cluster):
    """The configuration names a primary that a failover made a standby while the proxy was down:
    the probes decide before the first client is served, so writes sent the moment it listens go
    to the node that is the primary, none to the standby (25006), and none fails."""
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 4}, nodes=out_of_date(ha_cluster),
                        failover={"mode": "external", "buffer_timeout": 60}, health=FAST_HEALTH)
    writes = [Write(proxy, 21 + k) for k in range(4)]
    assert not any(w.waits(30) for w in writes)
    assert [w.got for w in writes] == [[ha_cluster.ports[0]]] * 4, [w.got for w in writes]
    topology = proxy.get("/topology")
    assert topology["primary"] == "primary" and topology["state"] == "CONFIRMED", topology


def test_a_proxy_that_cannot_reach_patronis_dcs_yet_sends_no_write_to_the_configured_primary(start_proxy,
                                                                                             ha_cluster):
    """With Patroni deciding, the configured primary is only a guess: a proxy started while etcd is
    out of reach makes writes wait (it does not send them to the configured node, a standby since a
    failover); once etcd answers, they go to the leader Patroni names there."""
    import json
    from tests.fix_etcd import Etcd
    late = Etcd()  # (its ports now; it starts after the proxy)
    prefix = "/service/pgcluster/"
    try:
        proxy = start_proxy(pool={"mode": "transaction", "max_size": 4}, nodes=out_of_date(ha_cluster),
                            health=FAST_HEALTH, failover={"mode": "external", "buffer_timeout": 60},
                            topology={"provider": "patroni", "dcs_url": late.url, "scope": "pgcluster"})
        write = Write(proxy, 22)
        assert write.waits(1.5), write.got  # (before: 25006 from standby1)
        status, body = proxy.api("POST", "/switchover", {"target": "standby2"})
        assert status == 409 and "the primary is not confirmed yet" in body["error"], body
        late.start()
        for i, name in enumerate(("primary", "standby1", "standby2")):
            late.put(f"{prefix}members/{name}", json.dumps(
                {"conn_url": f"postgres://127.0.0.1:{ha_cluster.ports[i]}/postgres",
                 "role": "master" if i == 0 else "replica", "state": "running"}))
        late.put(f"{prefix}leader", "primary")
        assert not write.waits(30) and write.got == [ha_cluster.ports[0]], write.got
    finally:
        late.stop()


def test_a_topology_provider_a_package_ships_decides_the_primary(start_proxy, ha_cluster, tmp_path):
    from tests.fix_proxy import ProxyProcess
    chosen = tmp_path / "primary.txt"
    chosen.write_text("primary")
    proxy = ProxyProcess(str(tmp_path), ha_cluster, pool={"mode": "transaction", "max_size": 4},
                         nodes=ha_nodes(ha_cluster), health=FAST_HEALTH,
                         topology={"provider": "tests.providers:FilePrimary"})
    proxy.start(env={"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "HELIOS_TEST_PRIMARY_FILE": str(chosen)})
    try:
        assert proxy.query("INSERT INTO ha_rows (id) VALUES (21) RETURNING inet_server_port()") == \
            [(ha_cluster.ports[0],)]
        ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(1), "-w", "promote")
        chosen.write_text("standby1")
        wait_for(lambda: proxy.api("GET", "/topology")[1]["primary"] == "standby1", 10, "the provider's primary")
        assert proxy.query("INSERT INTO ha_rows (id) VALUES (22) RETURNING inet_server_port()") == \
            [(ha_cluster.ports[1],)]
    finally:
        proxy.stop()
    proxy.sections["topology"]["provider"] = "no_such_provider"
    proxy.write_config()
    bad = subprocess.run([HELIOS, "check-config", "-c", proxy.config_path], capture_output=True, text=True)
    assert bad.returncode != 0 and "topology.provider: 'no_such_provider'" in bad.stdout + bad.stderr
