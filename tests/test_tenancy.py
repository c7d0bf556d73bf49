"""Multi-tenancy ([tenancy], tenancy/) end to end: tenants from the user name, row-level isolation
a client cannot step out of (SET, RESET, set_config, startup options), schema and database
isolation, per-tenant connection quotas and qps, runtime changes through the admin API kept
across a restart."""
import psycopg2
import pytest

from tests.fix_etcd import etcd  # noqa: F401 - a fixture
from tests.fix_redis import redis_server  # noqa: F401 - a fixture

TENANTS = [{"name": "acme", "isolation": "rls", "max_client_conn": 3},
           {"name": "globex", "isolation": "rls", "qps": 5.0},
           {"name": "initech", "isolation": "schema", "schema": "tn_initech"},
           {"name": "hooli", "isolation": "database", "database": "postgres"},
           {"name": "wayne", "isolation": "rls", "pool_size": 1}]


@pytest.fixture
def tenant_proxy(start_proxy, direct, tmp_path):
    direct.cursor().execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tn_app') THEN "
        "CREATE ROLE tn_app LOGIN; END IF; END $$; "
        "DROP TABLE IF EXISTS tn_items; CREATE TABLE tn_items (tenant text, name text); "
        "INSERT INTO tn_items VALUES ('acme', 'acme-item'), ('globex', 'globex-item'); "
        "ALTER TABLE tn_items ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY tn_rows ON tn_items USING (tenant = current_setting('helios.tenant', true)); "
        "GRANT SELECT ON tn_items TO tn_app; "
        "DROP SCHEMA IF EXISTS tn_initech CASCADE; CREATE SCHEMA tn_initech; "
        "CREATE TABLE tn_initech.tn_items (name text); INSERT INTO tn_initech.tn_items VALUES ('initech-item'); "
        "GRANT USAGE ON SCHEMA tn_initech TO tn_app; GRANT SELECT ON tn_initech.tn_items TO tn_app")
    return start_proxy(pool={"mode": "transaction"}, tenancy={"enabled": True,
                                                              "tenants_file": str(tmp_path / "tenants.json")},
                       tenants=TENANTS)


def connect(proxy, user, **kw):
    conn = proxy.connect(user=user, **kw)
    conn.autocommit = True
    return conn


def one(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    return cur.fetchone()[0]


def test_each_tenant_sees_only_its_rows_and_cannot_step_out(tenant_proxy):
    acme, globex = connect(tenant_proxy, "tn_app.acme"), connect(tenant_proxy, "tn_app.globex")
    for _ in range(3):  # (one pool of tn_app serves both: the setting follows each transaction)
        assert one(acme, "select string_agg(name, ',') from tn_items") == "acme-item"
        assert one(globex, "select string_agg(name, ',') from tn_items") == "globex-item"
    assert one(acme, "select current_user") == "tn_app"
    for attempt in ("set helios.tenant = 'globex'", "reset helios.tenant", "SET \"helios.tenant\" TO 'globex'",
                    "select set_config('helios.tenant', 'globex', false)",
                    "select set_config('helios.' || 'tenant', 'globex', true), count(*) from tn_items",
                    "do $$ begin execute 'set helios.tenant = ''globex'''; end $$"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            acme.cursor().execute(attempt)
    assert one(acme, "select string_agg(name, ',') from tn_items") == "acme-item"
    assert one(acme, "select current_setting('helios.tenant')") == "acme"  # (reading it is fine)
    with pytest.raises(psycopg2.OperationalError, match="may not set helios.tenant"):
        connect(tenant_proxy, "tn_app.acme", options="-c helios.tenant=globex")
    with pytest.raises(psycopg2.OperationalError, match='unknown tenant "nobody"'):
        connect(tenant_proxy, "tn_app.nobody")
    with pytest.raises(psycopg2.OperationalError, match="unknown tenant"):
        connect(tenant_proxy, "tn_app")


def test_schema_and_database_isolation(tenant_proxy):
    initech = connect(tenant_proxy, "tn_app.initech")
    assert one(initech, "select string_agg(name, ',') from tn_items") == "initech-item"
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        initech.cursor().execute("set search_path = public")
    hooli = connect(tenant_proxy, "tn_app.hooli", dbname="whatever")
    assert one(hooli, "select current_database()") == "postgres"


def test_quotas_hold_per_tenant(tenant_proxy):
    held = [connect(tenant_proxy, "tn_app.acme") for _ in range(3)]
    with pytest.raises(psycopg2.OperationalError, match='too many connections for tenant "acme"'):
        connect(tenant_proxy, "tn_app.acme")
    globex = connect(tenant_proxy, "tn_app.globex")  # (another tenant is unaffected)
    refused = 0
    for _ in range(20):  # qps = 5, burst 5: most of 20 at once are refused with 53400
        try:
            globex.cursor().execute("select 1")
        except psycopg2.errors.ConfigurationLimitExceeded:
            refused += 1
    assert 10 <= refused <= 15
    for c in held:
        c.close()
    connect(tenant_proxy, "tn_app.acme").close()  # (a place is free again)
    status, rows = tenant_proxy.api("GET", "/tenants")
    by_name = {t["name"]: t for t in rows}
    assert status == 200 and by_name["acme"]["refused_logins"] == 1 and by_name["globex"]["connections"] == 1
    __import__("time").sleep(1.2)  # (globex's bucket refills)
    with pytest.raises(psycopg2.errors.UndefinedTable):
        globex.cursor().execute("select * from tn_no_such_table")
    after = {t["name"]: t for t in tenant_proxy.api("GET", "/tenants")[1]}["globex"]
    assert after["errors"] == 1 and after["bytes_in"] > 0 and after["bytes_out"] > 0


def test_a_tenant_with_a_pool_of_its_own(tenant_proxy):
    import threading
    import time
    conns = [connect(tenant_proxy, "tn_app.wayne") for _ in range(2)]
    started = time.monotonic()
    threads = [threading.Thread(target=c.cursor().execute, args=("select pg_sleep(0.4)",)) for c in conns]
    for t in threads:
        t.start()
    other = connect(tenant_proxy, "tn_app.globex")  # (its pool is the shared one: not held up)
    assert one(other, "select 1") == 1 and time.monotonic() - started < 0.4
    for t in threads:
        t.join()
    assert time.monotonic() - started >= 0.8  # (one server connection: one after the other)
    pools = [p for p in tenant_proxy.api("GET", "/pools")[1] if p["tenant"] == "wayne"]
    assert [(p["user"], p["pool_size"]) for p in pools] == [("tn_app", 1)]


def test_tenants_change_at_runtime_and_the_change_survives_a_restart(tenant_proxy):
    assert tenant_proxy.api("POST", "/tenants", {"name": "umbrella", "isolation": "rls"})[0] == 201
    assert one(connect(tenant_proxy, "tn_app.umbrella"), "select count(*) from tn_items") == 0
    assert tenant_proxy.api("POST", "/tenants", {"name": "umbrella"})[0] == 409
    status, body = tenant_proxy.api("PUT", "/tenants/umbrella", {"isolation": "sideways"})
    assert status == 400 and "isolation" in body["error"]
    assert tenant_proxy.api("DELETE", "/tenants/acme") == (200, {"deleted": "acme"})
    with pytest.raises(psycopg2.OperationalError, match='unknown tenant "acme"'):
        connect(tenant_proxy, "tn_app.acme")
    tenant_proxy.stop()
    tenant_proxy.start()
    names = {t["name"] for t in tenant_proxy.api("GET", "/tenants")[1]}
    assert "umbrella" in names and "acme" not in names


def test_tenants_changed_at_one_member_of_a_fleet_hold_on_every_member(tenant_proxy, start_proxy, etcd):  # noqa: F811
    """[fleet] dcs_url: the tenants' runtime changes live in etcd; a change made through one member
    holds on the others within moments (no file to copy around)."""
    import time
    fleet = {"dcs_url": etcd.url}
    a, b = (start_proxy(pool={"mode": "transaction"}, tenancy={"enabled": True}, tenants=TENANTS,
                        fleet={**fleet, "name": name}) for name in ("a", "b"))

    def eventually(check, what):
        deadline = time.monotonic() + 2
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)
    assert a.api("POST", "/tenants", {"name": "umbrella", "isolation": "rls"})[0] == 201
    eventually(lambda: b.api("GET", "/tenants/umbrella")[0] == 200, "umbrella on b")
    assert one(connect(b, "tn_app.umbrella"), "select count(*) from tn_items") == 0
    assert b.api("DELETE", "/tenants/acme") == (200, {"deleted": "acme"})
    eventually(lambda: a.api("GET", "/tenants/acme")[0] == 404, "acme gone from a")
    with pytest.raises(psycopg2.OperationalError, match='unknown tenant "acme"'):
        connect(a, "tn_app.acme")
    a.stop()
    a.start()  # a member starting later finds the fleet's changes
    eventually(lambda: {t["name"] for t in a.api("GET", "/tenants")[1]} >= {"umbrella"}, "umbrella after restart")
    assert "acme" not in {t["name"] for t in a.api("GET", "/tenants")[1]}


def test_a_tenants_qps_holds_for_a_fleet_sharing_redis(tenant_proxy, start_proxy, redis_server):  # noqa: F811
    """globex's qps of 5 on Redis: two proxies together admit it once, not twice."""
    import time
    if redis_server.proc.poll() is not None:
        redis_server.start()
    proxies = [start_proxy(pool={"mode": "transaction"}, tenancy={"enabled": True}, tenants=TENANTS,
                           fleet={"redis_url": redis_server.url, "limit_chunk": 2}) for _ in range(2)]
    conns = [connect(p, "tn_app.globex") for p in proxies]
    admitted, started = 0, time.monotonic()
    while time.monotonic() - started < 2.0:
        for conn in conns:
            try:
                one(conn, "select 1")
                admitted += 1
            except psycopg2.errors.ConfigurationLimitExceeded:
                pass
    took = time.monotonic() - started
    assert 5 <= admitted <= 5 + 5 * took * 1.15 + 2, admitted  # (one bucket: burst 5, then 5/s)


def test_the_tenant_of_a_jwt_claim(start_proxy, direct, tenant_proxy):
    import time

    import jwt
    secret = "an HS256 secret of at least thirty-two bytes"
    proxy = start_proxy(pool={"mode": "transaction"}, tenancy={"enabled": True, "identify": "jwt_claim"},
                        tenants=TENANTS, auth={"method": "trust", "rules": [
                            {"user": "tn_app", "method": "jwt", "allow_plaintext": True}],
                            "jwt": {"secret": secret, "algorithms": ["HS256"]}})

    def token(**claims):
        return jwt.encode({"sub": "tn_app", "exp": int(time.time()) + 60, **claims}, secret, algorithm="HS256")
    acme = connect(proxy, "tn_app", password=token(tenant="acme"), sslmode="disable")
    assert one(acme, "select string_agg(name, ',') from tn_items") == "acme-item"
    with pytest.raises(psycopg2.OperationalError, match='no "tenant" claim'):
        connect(proxy, "tn_app", password=token(), sslmode="disable")
    with pytest.raises(psycopg2.OperationalError, match='unknown tenant "nobody"'):
        connect(proxy, "tn_app", password=token(tenant="nobody"), sslmode="disable")


def test_the_tenant_of_the_tls_server_name(start_proxy, tenant_proxy, tls_files):
    proxy = start_proxy(pool={"mode": "transaction"}, tenancy={"enabled": True, "identify": "sni"}, tenants=TENANTS,
                        tls={"client_mode": "allow", "client_cert_file": tls_files["cert"],
                             "client_key_file": tls_files["key"]})
    # libpq sends the host name (SNI) and connects to hostaddr
    conn = psycopg2.connect(host="globex.db.test", hostaddr="127.0.0.1", port=proxy.port, user="tn_app",
                            dbname="postgres", sslmode="require")
    conn.autocommit = True
    assert one(conn, "select string_agg(name, ',') from tn_items") == "globex-item"
    conn.close()
    with pytest.raises(psycopg2.OperationalError, match="no TLS server name"):
        psycopg2.connect(host="127.0.0.1", port=proxy.port, user="tn_app", dbname="postgres", sslmode="disable")


def test_graphql_requests_of_a_tenant_see_its_rows(start_proxy, tenant_proxy):
    import json
    import time
    import urllib.request

    import jwt
    secret = "an HS256 secret of at least thirty-two bytes"
    proxy = start_proxy(tenancy={"enabled": True}, tenants=TENANTS, graphql={"enabled": True},
                        auth={"jwt": {"secret": secret, "algorithms": ["HS256"]}})

    def names(**claims):
        token = jwt.encode({"sub": "tn_app", "exp": int(time.time()) + 60, **claims}, secret, algorithm="HS256")
        request = urllib.request.Request(
            f"http://127.0.0.1:{proxy.admin_port}/graphql", data=json.dumps({"query": "{ tn_items { name } }"}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=20) as r:
                return [row["name"] for row in json.load(r)["data"]["tn_items"]]
        except urllib.error.HTTPError as e:
            return e.code
    assert names(tenant="acme") == ["acme-item"] and names(tenant="globex") == ["globex-item"]
    assert names() == []  # (no tenant: the policy shows nothing)
    assert names(tenant="nobody") == 401


def test_a_tenants_qps_counts_executions_of_prepared_statements(tenant_proxy):
    import time
    import psycopg
    with psycopg.connect(tenant_proxy.dsn(user="tn_app.globex"), autocommit=True) as conn:
        time.sleep(1.2)  # (a full bucket: qps 5, burst 5)
        conn.execute("select 1", prepare=True)
        ok = refused = 0
        for _ in range(30):  # Bind/Execute only, at once: the burst passes, the rest is refused
            try:
                conn.execute("select 1", prepare=True)
                ok += 1
            except psycopg.errors.ConfigurationLimitExceeded:
                refused += 1
    assert ok <= 6 and refused >= 24, (ok, refused)


@pytest.mark.parametrize("method", ["scram-sha-256", "md5"])
@pytest.mark.parametrize("required", [False, True])
def test_a_tenant_may_have_a_password_of_its_own(start_proxy, direct, tmp_path, method, required):
    from tests.test_auth import userlist
    direct.cursor().execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tn_app') THEN "
        "CREATE ROLE tn_app LOGIN; END IF; END $$")
    users = userlist(tmp_path, {"tn_app": "base-pw", "tn_app.acme": "acme-pw"})
    proxy = start_proxy(auth={"method": method, "users_file": users},
                        tenancy={"enabled": True, "tenant_secrets": "required" if required else "optional"},
                        tenants=[{"name": "acme", "isolation": "rls"}, {"name": "globex", "isolation": "rls"}])
    conn = connect(proxy, "tn_app.acme", password="acme-pw")
    assert one(conn, "select current_user") == "tn_app"  # (the backend login stays the user's own)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(proxy, "tn_app.acme", password="base-pw")  # the user's password does not open acme
    if required:  # no line of its own: refused
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            connect(proxy, "tn_app.globex", password="base-pw")
    else:  # the base-user mode: the user's line opens a tenant without a line of its own
        assert one(connect(proxy, "tn_app.globex", password="base-pw"), "select 1") == 1


def test_an_api_key_made_for_a_tenant_opens_only_that_tenant(start_proxy, direct, tmp_path, tls_files):
    import subprocess
    from tests.fix_proxy import BIN
    direct.cursor().execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tn_app') THEN "
        "CREATE ROLE tn_app LOGIN; END IF; END $$")
    proxy = start_proxy(auth={"method": "api_key", "api_keys": {"file": str(tmp_path / "keys.json")}},
                        tls={"client_mode": "allow", "client_cert_file": tls_files["cert"],
                             "client_key_file": tls_files["key"]},
                        tenancy={"enabled": True},
                        tenants=[{"name": "acme", "isolation": "rls"}, {"name": "globex", "isolation": "rls"}])
    proxy.write_config()
    out = subprocess.run([BIN, "apikey", "create", "tn_app", "-c", proxy.config_path, "--tenant", "acme"],
                         capture_output=True, text=True, check=True)
    key = out.stdout.strip().splitlines()[-1]
    assert "tenant acme" in out.stdout
    conn = connect(proxy, "tn_app.acme", password=key, sslmode="require")
    assert one(conn, "select 1") == 1
    with pytest.raises(psycopg2.OperationalError):
        connect(proxy, "tn_app.globex", password=key, sslmode="require")
