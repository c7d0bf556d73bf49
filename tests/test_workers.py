"""[server] workers = N: several proxy processes on one port, seen by operators as one proxy."""
import os
import signal
import threading
import time

import psycopg2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helios_proxy.config import load
from helios_proxy.frontend.workers import share

from .fix_proxy import ProxyProcess


def config(**pool):
    return load({"server": {"workers": 3, "max_client_conn": 100},
                 "pool": {"max_size": 5, "min_size": 0, "max_db_connections": 7, **pool},
                 "failover": {"mode": "promote"},
                 "users": {"app": {"max_connections": 4}},
                 "nodes": [{"name": "p", "role": "primary"}]})


def test_limits_are_split_so_the_workers_keep_the_configured_totals():
    shares = [share(config(), i, 3) for i in range(3)]
    assert [c.pool.max_size for c in shares] == [2, 2, 1]
    assert sum(c.server.max_client_conn for c in shares) == 100
    assert sum(c.pool.max_db_connections for c in shares) == 7
    assert [c.users["app"].max_connections for c in shares] == [2, 1, 1]
    assert [c.pool.min_size for c in shares] == [0, 0, 0]  # 0 means none, not a share of nothing
    assert [c.failover.mode for c in shares] == ["promote", "external", "external"]  # one promoter
    assert [c.pool.max_size for c in (share(config(max_size=2), i, 3) for i in range(3))] == [1, 1, 1]


@pytest.fixture
def workers(cluster, tmp_path):
    p = ProxyProcess(str(tmp_path), cluster, server={"workers": 2, "max_client_conn": 100},
                     pool={"mode": "transaction", "max_size": 2}, log={"connections": False})
    p.start()
    wait_workers(p)
    yield p
    p.stop()


def wait_workers(p, timeout=30):
    """Until the arbiter's admin API answers and every worker is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = p.api("GET", "/workers")
            if status == 200 and all(w["running"] for w in body):
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, p.output()
        time.sleep(0.1)


def run_clients(p, clients, transactions):
    errors = []

    def work():
        try:
            conn = p.connect()
            conn.autocommit = True
            cur = conn.cursor()
            for i in range(transactions):
                cur.execute("SELECT %s", (i,))
                assert cur.fetchone() == (i,)
            conn.close()
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_workers_share_the_port_and_the_admin_api_adds_them_up(workers):
    conns = [workers.connect() for _ in range(16)]  # idle, spread by the kernel over the workers
    try:
        status, sessions = workers.api("GET", "/sessions")
        assert status == 200 and len(sessions) == 16
        assert {s["worker"] for s in sessions} == {0, 1}, sessions
        assert len({s["id"] for s in sessions}) == 16  # ids are unique over the workers
    finally:
        for c in conns:
            c.close()
    run_clients(workers, 12, 50)
    status, pools = workers.api("GET", "/pools")
    assert status == 200
    (pool,) = [p for p in pools if p["database"] == "postgres"]
    assert pool["pool_size"] == 2  # 1 + 1: the workers together keep max_size
    assert pool["sv_active"] + pool["sv_idle"] <= 2
    status, stats = workers.api("GET", "/stats")
    (db,) = [row for row in stats if row["database"] == "postgres"]
    assert db["total_xact_count"] >= 600 and db["total_query_count"] >= 600
    status, metrics = workers.api("GET", "/metrics")
    assert metrics["workers"] == 2
    assert sum(metrics["transaction_seconds"]["counts"]) >= 600
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{workers.admin_port}/metrics/prometheus", timeout=30) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    total = sum(s.value for s in families["helios_transactions"].samples
                if s.name == "helios_transactions_total" and s.labels["database"] == "postgres")
    assert total == db["total_xact_count"]
    status, listed = workers.api("GET", "/config")
    assert listed["pool"]["max_size"] == 2 and listed["server"]["workers"] == 2


def test_a_session_of_either_worker_can_be_ended_through_the_one_api(workers):
    conns = [workers.connect() for _ in range(12)]
    try:
        status, sessions = workers.api("GET", "/sessions")
        for worker in (0, 1):
            victim = next(s for s in sessions if s["worker"] == worker)
            status, body = workers.api("DELETE", f"/sessions/{victim['id']}")
            assert status == 200 and body == {"killed": victim["id"]}
        status, after = workers.api("GET", "/sessions")
        assert len(after) == 10
        assert workers.api("DELETE", "/sessions/999999")[0] == 404
        assert workers.api("DELETE", "/sessions/1", token="wrong")[0] == 401
    finally:
        for c in conns:
            try:
                c.close()
            except psycopg2.Error:
                pass


def test_reload_reaches_every_worker_and_a_dead_worker_is_started_again(workers):
    status, body = workers.api("POST", "/reload")
    assert status == 200 and body["reloaded"] is True
    status, before = workers.api("GET", "/workers")
    os.kill(before[1]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        status, now = workers.api("GET", "/workers")
        if now[1]["running"] and now[1]["pid"] != before[1]["pid"]:
            break
        assert time.monotonic() < deadline, workers.output()
        time.sleep(0.1)
    assert now[1]["restarts"] == 1
    run_clients(workers, 4, 20)  # both serve again
    workers.stop()
    assert workers.proc.returncode == 0
    for w in now:  # no worker outlives the arbiter
        with pytest.raises(ProcessLookupError):
            os.kill(w["pid"], 0)


def test_a_port_in_use_stops_the_arbiter_with_the_workers_error(cluster, tmp_path):
    import socket
    import subprocess
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    p = ProxyProcess(str(tmp_path), cluster, server={"workers": 2, "listen": f"127.0.0.1:{port}"})
    try:
        p.start(wait=False)
        try:
            code = p.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(p.output())
        assert code == 1
        assert f"cannot listen on 127.0.0.1:{port}" in p.output()
        assert "Traceback" not in p.output()
    finally:
        blocker.close()


def test_a_switchover_through_the_one_api_moves_every_worker_and_loses_no_write(start_proxy, ha_cluster):
    """Worker 0 switches over while worker 1 holds its clients; afterwards both write to the new
    primary, and no write acknowledged through either worker is missing there."""
    from tests.fix_ha import ha_nodes, query
    p = start_proxy(server={"workers": 2}, pool={"mode": "transaction", "max_size": 4}, nodes=ha_nodes(ha_cluster),
                    failover={"mode": "promote"}, log={"connections": False},
                    health={"interval": 0.2, "timeout": 1.0, "failure_threshold": 3, "success_threshold": 1})
    wait_workers(p)
    p.query("CREATE TABLE switch_rows (id int PRIMARY KEY)")
    conns = []
    while len({s["worker"] for s in p.api("GET", "/sessions")[1]}) < 2:  # writers on both workers
        assert len(conns) < 40
        conns.append(p.connect())
    acked, errors, stop, switched = [], [], threading.Event(), threading.Event()
    after = [0] * len(conns)  # writes acknowledged to each writer once the switchover was done

    def writer(i, conn):
        conn.autocommit = True
        cur = conn.cursor()
        n = i * 100000
        while not stop.is_set() and n < (i + 1) * 100000:
            try:
                cur.execute("INSERT INTO switch_rows VALUES (%s)", (n,))
                acked.append(n)
                after[i] += switched.is_set()
            except psycopg2.Error as e:
                errors.append(e)
                return
            n += 1
            time.sleep(0.002)
    threads = [threading.Thread(target=writer, args=(i, c), daemon=True) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    time.sleep(1)
    status, body = p.api("POST", "/switchover", {"target": "standby1"})
    switched.set()
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(10)
    assert status == 200, body
    assert not errors, errors[:3]
    assert all(after), after  # every writer, on either worker, goes on writing after the switch
    # through either worker, every acknowledged write is on the new primary: none went to the old one
    rows = {r[0] for r in query(ha_cluster.ports[1], "SELECT id FROM switch_rows")}
    assert set(acked) <= rows, sorted(set(acked) - rows)[:10]
    status, nodes = p.api("GET", "/nodes")
    assert {n["name"]: n["primary"] for n in nodes}["standby1"]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_every_cancel_reaches_its_query_whichever_worker_it_lands_on(cluster, tmp_path, mode):
    p = ProxyProcess(str(tmp_path), cluster, server={"workers": 2, "max_client_conn": 100},
                     pool={"mode": mode, "max_size": 10}, log={"connections": False})
    p.start()
    try:
        wait_workers(p)
        canceled = 0
        for _ in range(10):
            conn = p.connect()
            conn.autocommit = True
            timer = threading.Timer(0.5, conn.cancel)  # (libpq's cancel: a new connection, any worker)
            timer.start()
            started = time.monotonic()
            try:
                conn.cursor().execute("select pg_sleep(20)")
            except psycopg2.errors.QueryCanceled:
                canceled += 1
            timer.join()
            assert time.monotonic() - started < 10
            conn.close()
        assert canceled == 10
    finally:
        p.stop()
