"""The admin REST API through the real HTTP port of `helios-proxy run`, the virtual admin database
on the proxy port, the status page in headless Chromium, and the API fuzzed from its OpenAPI spec."""
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request

import psycopg2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .test_routing import nodes as routed_nodes


@pytest.fixture
def admin_proxy(start_proxy, cluster):
    return start_proxy(pool={"mode": "transaction", "max_size": 5}, nodes=routed_nodes(cluster),
                       admin={"users": ["postgres"], "sql_enabled": True, "token": "test-token"})


def raw(proxy, method, path, data=None, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{proxy.admin_port}{path}", data=data, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_every_read_endpoint_answers_json_consistent_with_traffic(admin_proxy, cluster):
    conn = admin_proxy.connect()
    conn.autocommit = True
    for _ in range(50):
        conn.cursor().execute("select 1")
    conn.cursor().execute("create table if not exists admin_t (id int)")
    for path in ("/health", "/health/ready", "/health/live", "/nodes", "/nodes/primary", "/topology", "/config",
                 "/metrics", "/sessions", "/pools", "/servers", "/stats", "/version", "/openapi.json"):
        status, body = admin_proxy.api("GET", path, token=None)
        assert status == 200, (path, body)
    status, health = admin_proxy.api("GET", "/health")
    assert health["status"] == "ok" and health["primary"] == "primary" and len(health["healthy_nodes"]) == 3
    stats = {r["database"]: r for r in admin_proxy.api("GET", "/stats")[1]}
    assert stats["postgres"]["total_query_count"] >= 51 and stats["postgres"]["total_xact_count"] >= 51
    assert stats["postgres"]["total_received"] > 0 and stats["postgres"]["total_sent"] > 0
    sessions = admin_proxy.api("GET", "/sessions")[1]
    import socket
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as own:  # (a dup of its socket)
        port = own.getsockname()[1]  # this client's port, as the proxy sees it
    mine = [s for s in sessions if s["port"] == port]
    assert mine and mine[0]["queries"] >= 51, (port, sessions)
    assert len(mine) == 1 and mine[0]["state"] == "idle" and mine[0]["user"] == "postgres"
    assert admin_proxy.api("GET", f"/sessions/{mine[0]['id']}")[1]["queries"] == mine[0]["queries"]
    pools = admin_proxy.api("GET", "/pools")[1]
    by_node = {p["node"]: p for p in pools if p["database"] == "postgres"}
    assert {"standby1", "standby2", "primary"} <= set(by_node)
    assert all(p["cl_active"] == 0 and p["sv_active"] == 0 and p["pool_size"] == 5 for p in pools)
    nodes = {n["name"]: n for n in admin_proxy.api("GET", "/nodes")[1]}
    assert nodes["standby1"]["reads"] + nodes["standby2"]["reads"] >= 50 and nodes["primary"]["writes"] >= 1
    assert admin_proxy.api("GET", "/version")[1]["name"] == "HeliosProxy"
    conn.close()


def test_prometheus_text_parses_and_follows_traffic(admin_proxy):
    conn = admin_proxy.connect()
    conn.autocommit = True
    for _ in range(30):
        conn.cursor().execute("select 1")
    status, ctype, body = raw(admin_proxy, "GET", "/metrics/prometheus")
    assert status == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {"helios_client_connections", "helios_server_connections", "helios_queries", "helios_node_leases",
            "helios_node_healthy", "helios_transaction_duration_seconds", "helios_failovers",
            "helios_switchover_buffer_depth"} <= set(families)
    queries = {s.labels["database"]: s.value for s in families["helios_queries"].samples
               if s.name == "helios_queries_total"}
    assert queries["postgres"] >= 30
    healthy = {s.labels["node"]: s.value for s in families["helios_node_healthy"].samples}
    assert healthy == {"primary": 1, "standby1": 1, "standby2": 1}
    count = [s.value for s in families["helios_transaction_duration_seconds"].samples
             if s.name.endswith("_count")][0]
    assert count >= 30
    active = {s.labels["state"]: s.value for s in families["helios_client_connections"].samples}
    assert active["idle"] >= 1
    conn.close()


def test_mutations_need_the_token_and_bad_input_gets_json_4xx(admin_proxy, start_proxy, cluster):
    assert admin_proxy.api("POST", "/nodes/standby1/disable", token=None)[0] == 401
    assert admin_proxy.api("POST", "/nodes/standby1/disable", token="nope")[0] == 401
    assert admin_proxy.api("POST", "/nodes/127.0.0.1:%d/disable" % cluster.ports[1])[0] == 200
    assert admin_proxy.api("POST", "/nodes/standby1/enable")[0] == 200
    for method, path, data, code in (("GET", "/nodes/999.1.1.1:1", None, 404), ("GET", "/no/such/path", None, 404),
                                     ("POST", "/api/sql", b"{not json", 400), ("DELETE", "/nodes", None, 405),
                                     ("POST", "/pause", b'{"timeout": "x"}', 400),
                                     ("POST", "/api/sql", b'{"sql": 5}', 400),
                                     ("DELETE", "/sessions/999999", None, 404)):
        status, ctype, body = raw(admin_proxy, method, path, data, {"Authorization": "Bearer test-token",
                                                                   "Content-Type": "application/json"})
        assert status == code and ctype.startswith("application/json") and "error" in json.loads(body), path
    assert "test-token" not in raw(admin_proxy, "GET", "/config")[2].decode()
    # no token configured: mutations are refused, reads still work
    open_proxy = start_proxy(admin={"token": ""})
    assert open_proxy.api("POST", "/reload", token=None)[0] == 403
    assert open_proxy.api("GET", "/nodes", token=None)[0] == 200


def test_admin_api_beyond_loopback_needs_a_token(tmp_path, cluster):
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path), cluster, admin={"listen": "0.0.0.0:9", "token": ""})
    p.write_config()
    out = subprocess.run([os.path.join(os.path.dirname(__import__("sys").executable), "helios-proxy"), "run",
                          "-c", p.config_path], capture_output=True, text=True, timeout=20)
    assert out.returncode != 0 and "admin.listen" in out.stderr and "admin.token" in out.stderr


def test_kill_a_session(admin_proxy):
    victim = admin_proxy.connect()
    victim.autocommit = True
    victim.cursor().execute("select 1")
    sid = max(s["id"] for s in admin_proxy.api("GET", "/sessions")[1])
    assert admin_proxy.api("DELETE", f"/sessions/{sid}")[1] == {"killed": sid}
    with pytest.raises(psycopg2.OperationalError):
        victim.cursor().execute("select 1")


def test_pause_waits_for_an_api_sql_write_under_way(admin_proxy, direct):
    """An /api/sql statement runs on a connection of its own, outside any session: PAUSE waits
    for it as for a client's transaction (its row is committed when PAUSE returns)."""
    direct.cursor().execute("drop table if exists api_paused; create table api_paused (x int)")
    answered = {}
    t = threading.Thread(target=lambda: answered.update(out=admin_proxy.api(
        "POST", "/api/sql", {"sql": "insert into api_paused select 1 from pg_sleep(1.5)"})))
    t.start()
    time.sleep(0.4)  # (under way)
    status, out = admin_proxy.api("POST", "/pause", {"timeout": 10})
    try:
        assert status == 200 and out["still_active"] == 0, out
        with direct.cursor() as cur:
            cur.execute("select count(*) from api_paused")
            assert cur.fetchone() == (1,)
    finally:
        assert admin_proxy.api("POST", "/resume", {})[0] == 200
    t.join(10)
    assert answered["out"][0] == 200 and answered["out"][1]["row_count"] == 0, answered


def test_api_sql_routes_writes_and_reads_with_read_your_writes(admin_proxy, cluster, start_proxy):
    sql = lambda body: admin_proxy.api("POST", "/api/sql", body)  # noqa: E731
    status, out = sql({"sql": "create table if not exists api_t (id int, v text)"})
    assert status == 200 and out["node"] == "primary"
    for i in range(20):
        status, out = sql({"sql": "insert into api_t values ($1, $2) returning id", "params": [i, f"v{i}"]})
        assert status == 200 and out["rows"] == [[str(i)]] and out["route"] == "write"
        status, out = sql({"sql": "select count(*) from api_t where id = $1", "params": [i]})
        assert out["rows"] == [["1"]] and out["node"].startswith("standby"), out  # its own write, on a standby
    status, out = sql({"sql": "select id, v from api_t order by id", "max_rows": 5})
    assert out["columns"] == ["id", "v"] and len(out["rows"]) == 5 and out["truncated"]
    status, out = sql({"sql": "select pg_sleep(10)"})
    assert status == 400 and out["sqlstate"] == "57014"
    status, out = sql({"sql": "select * from no_such_table"})
    assert status == 400 and out["sqlstate"] == "42P01"
    off = start_proxy()
    assert off.api("POST", "/api/sql", {"sql": "select 1"})[0] == 403


def test_pause_holds_new_transactions_until_resume(admin_proxy):
    conn = admin_proxy.connect()
    conn.autocommit = True
    assert admin_proxy.api("POST", "/pause", {"database": "postgres", "timeout": 5})[1] == \
        {"paused": "postgres", "still_active": 0}
    done = []
    t = threading.Thread(target=lambda: (conn.cursor().execute("select 1"), done.append(time.monotonic())))
    t.start()
    time.sleep(0.5)
    assert not done
    resumed = time.monotonic()
    assert admin_proxy.api("POST", "/resume", {"database": "postgres"})[0] == 200
    t.join(10)
    assert done and done[0] >= resumed
    assert admin_proxy.api("POST", "/resume", {})[0] == 409


def test_reload_through_the_api_applies_and_reports_restart_settings(admin_proxy):
    admin_proxy.sections["pool"]["max_size"] = 7
    admin_proxy.nodes[1]["weight"] = 3
    admin_proxy.sections["server"]["max_startup_packet"] = 5000
    admin_proxy.nodes[2]["enabled"] = False
    admin_proxy.write_config()
    status, out = admin_proxy.api("POST", "/reload")
    assert status == 200 and out["reloaded"] and out["restart_required"] == ["server.max_startup_packet"]
    conn = admin_proxy.connect()
    conn.cursor().execute("select 1")
    conn.close()
    assert {p["pool_size"] for p in admin_proxy.api("GET", "/pools")[1]} == {7}
    assert admin_proxy.api("GET", "/nodes/standby1")[1]["weight"] == 3
    assert admin_proxy.api("GET", "/nodes/standby2")[1]["fenced"] == "disabled in the configuration"
    admin_proxy.nodes[2]["enabled"] = True
    admin_proxy.write_config()
    assert admin_proxy.api("POST", "/reload")[0] == 200
    assert admin_proxy.api("GET", "/nodes/standby2")[1]["fenced"] is None


def test_admin_console_on_the_proxy_port(admin_proxy, psql_bin):
    run = lambda sql, user="postgres": subprocess.run(  # noqa: E731
        [psql_bin, "-h", "127.0.0.1", "-p", str(admin_proxy.port), "-U", user, "-d", "helios", "-AtX", "-c", sql],
        capture_output=True, text=True, timeout=20)
    out = run("SHOW POOLS")
    assert out.returncode == 0, out.stderr
    assert run("SHOW NODES").stdout.count("|") > 10 and "standby1" in run("SHOW NODES").stdout
    for command in ("SHOW CLIENTS", "SHOW SERVERS", "SHOW STATS", "SHOW VERSION", "SHOW HELP", "RELOAD"):
        assert run(command).returncode == 0, command
    full = lambda sql: subprocess.run(  # noqa: E731  (with the header line)
        [psql_bin, "-h", "127.0.0.1", "-p", str(admin_proxy.port), "-U", "postgres", "-d", "helios", "-AX", "-c", sql],
        capture_output=True, text=True, timeout=20).stdout.splitlines()
    admin_proxy.query("select 1")  # a pool for database postgres
    databases = full("SHOW DATABASES")
    assert databases[0].startswith("name|host|port|database|force_user|pool_size") and "|transaction|" in databases[1]
    victim = admin_proxy.connect(dbname="app")
    victim.autocommit = True
    victim.cursor().execute("select 1")
    assert run("KILL app").returncode == 0
    with pytest.raises(psycopg2.OperationalError):
        victim.cursor().execute("select 1")
    assert admin_proxy.query("select 2") == [(2,)]  # other databases untouched
    config = full("SHOW CONFIG")
    assert config[0] == "key|value|default|changeable"
    assert "pool.max_size|5|20|yes" in config and "admin.token|********||no" in config
    assert "PAUSE" in subprocess.run([psql_bin, "-h", "127.0.0.1", "-p", str(admin_proxy.port), "-U", "postgres",
                                      "-d", "helios", "-X", "-c", "PAUSE", "-c", "RESUME"],
                                     capture_output=True, text=True, timeout=20).stdout
    bad = run("DROP TABLE x")
    assert bad.returncode != 0 and "unknown admin command" in bad.stderr
    refused = run("SHOW POOLS", user="app")
    assert refused.returncode != 0 and "may not use the admin console" in refused.stderr


def test_status_page_renders_live_nodes_in_headless_chromium(admin_proxy, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium not installed (scripts/setup-system --test installs it)")
    conn = admin_proxy.connect()
    conn.autocommit = True
    for _ in range(20):
        conn.cursor().execute("select 1")
    deadline = time.monotonic() + 10  # two samples of the totals (every 2 s) make the first point of the chart
    while len(admin_proxy.api("GET", "/metrics")[1]["history"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    url = f"http://127.0.0.1:{admin_proxy.admin_port}/"
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000"]
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
    shot = tmp_path / "status.png"
    subprocess.run(common + [f"--screenshot={shot}", "--window-size=900,700", url], capture_output=True, timeout=60)
    assert shot.exists() and shot.stat().st_size > 5000
    assert 'data-loaded="1"' in dom
    for n in admin_proxy.api("GET", "/nodes")[1]:
        assert f"<td>{n['name']}</td><td>{n['address']}</td>" in dom
    table = dom.split('<table id="nodes">')[1].split("</table>")[0]
    assert table.count('class="ok">healthy') == 3 and "(CONFIRMED)" in table
    assert "max " in dom.split('<svg id="chart"')[1]  # the chart drew a line


def test_openapi_fuzz_never_gets_a_server_error(start_proxy):
    schemathesis = pytest.importorskip("schemathesis")
    proxy = start_proxy(admin={"token": "test-token"})  # one node: a fuzzed failover has nothing to promote
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{proxy.admin_port}/openapi.json")
    failures, calls = [], []
    for op in schema.get_all_operations():
        operation = op.ok()
        strategy = operation.as_strategy()
        from hypothesis import HealthCheck, given, settings

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case):
            case.headers = {**(case.headers or {}), "Authorization": "Bearer test-token"}
            response = case.call(base_url=f"http://127.0.0.1:{proxy.admin_port}", timeout=30)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.status_code, response.text[:200]))
        check()
    assert not failures, failures[:5]
    assert len(calls) > 100 and any(c == 200 for c in calls) and any(400 <= c < 500 for c in calls)


def test_helios_ctl_script(admin_proxy):
    ctl = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "helios-ctl")
    base = [ctl, "--url", f"http://127.0.0.1:{admin_proxy.admin_port}", "--token", "test-token"]
    run = lambda *a: subprocess.run(base + list(a), capture_output=True, text=True, timeout=60)  # noqa: E731
    out = run("status")
    assert out.returncode == 0 and "primary primary (CONFIRMED)" in out.stdout, out.stderr
    assert "standby2" in run("nodes").stdout
    assert run("drain", "standby2").stdout.strip() == "standby2 drained"
    assert admin_proxy.api("GET", "/nodes/standby2")[1]["fenced"] == "drained by helios-ctl"
    assert run("enable", "standby2").returncode == 0
    assert admin_proxy.api("GET", "/nodes/standby2")[1]["fenced"] is None
    bad = run("drain", "nope")
    assert bad.returncode != 0 and "404" in bad.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_host_header_body_size_and_allow_header(start_proxy, workers):
    proxy = start_proxy(server={"workers": workers})
    if workers > 1:
        from tests.test_workers import wait_workers
        wait_workers(proxy)
    base = f"127.0.0.1:{proxy.admin_port}"
    assert raw(proxy, "GET", "/stats", headers={"Host": base})[0] == 200
    assert raw(proxy, "GET", "/stats", headers={"Host": f"localhost:{proxy.admin_port}"})[0] == 200
    status, _, body = raw(proxy, "GET", "/stats", headers={"Host": "rebind.attacker.example"})
    assert status == 421 and b"allowed_hosts" in body  # a DNS-rebinding page reads nothing
    big = b"{" + b" " * (2 << 20) + b"}"
    status, _, body = raw(proxy, "POST", "/reload", data=big,
                          headers={"Authorization": "Bearer test-token", "Content-Type": "application/json"})
    assert status == 413
    if workers > 1:
        return  # (the workers' front passes a worker's 405 on without its Allow header)
    req = urllib.request.Request(f"http://{base}/nodes", method="DELETE",
                                 headers={"Authorization": "Bearer test-token"})
    try:
        urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as e:
        assert e.code == 405 and "GET" in e.headers.get("Allow", "")
    else:
        raise AssertionError("DELETE /nodes was accepted")


def test_named_tokens_have_roles_and_mutations_name_them(start_proxy):
    from helios_proxy.admin.tokens import new_entry
    tokens = {role: new_entry(f"{role}-bot", role) for role in ("viewer", "operator", "admin")}
    proxy = start_proxy(admin={"token": "", "tokens": [entry for _, entry in tokens.values()]})
    secret = {role: t for role, (t, _) in tokens.items()}
    assert proxy.api("GET", "/stats", token=secret["viewer"])[0] == 200
    assert proxy.api("POST", "/pause", {"timeout": 1}, token=secret["viewer"])[0] == 403
    assert proxy.api("POST", "/pause", {"timeout": 1}, token=secret["operator"])[0] == 200
    assert proxy.api("POST", "/resume", {}, token=secret["operator"])[0] == 200
    status, out = proxy.api("POST", "/switchover", {"target": "primary"}, token=secret["operator"])
    assert status == 403 and "needs admin" in out["error"]
    assert proxy.api("POST", "/reload", {}, token=secret["admin"])[0] == 200
    assert proxy.api("POST", "/reload", {}, token="not-a-token")[0] == 401
    log = proxy.output()
    assert "POST /pause by token 'operator-bot' (operator)" in log and "by token 'admin-bot' (admin)" in log
    assert all(t not in log for t in secret.values())  # the tokens themselves are never logged
    config = proxy.api("GET", "/config")[1]
    assert config["admin"]["tokens"] == "********"


def test_disabling_the_primary_needs_force(admin_proxy):
    status, out = admin_proxy.api("POST", "/nodes/primary/disable", {})
    assert status == 409 and "is the primary" in out["error"]
    assert admin_proxy.query("select 1") == [(1,)]  # writes were never stopped
    assert admin_proxy.api("POST", "/nodes/standby1/disable", {})[0] == 200
    assert admin_proxy.api("POST", "/nodes/standby1/enable", {})[0] == 200
