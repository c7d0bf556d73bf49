"""Tenant isolation PostgreSQL enforces (tenancy/proof.py, `helios-proxy tenancy install`): row-level
security written `using (tenant = helios.tenant())` holds whatever a tenant's client sets, calls or
executes, in both pool modes, and nothing a tenant does outlives its lease. Each try counts the
victim's rows straight on PostgreSQL first, so a test cannot pass on an empty table."""
import hashlib
import hmac
import os
import subprocess

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.fix_proxy import BIN

TENANTS = [{"name": "acme", "isolation": "rls"}, {"name": "globex", "isolation": "rls"}]
READ = "select coalesce(string_agg(name, ','), '') from tv_vault"


@pytest.fixture(scope="module")
def vault(cluster):
    conn = psycopg2.connect(host="127.0.0.1", port=cluster.primary_port, user="postgres", dbname="postgres")
    conn.autocommit = True
    conn.cursor().execute(r"""
        DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tv_app') THEN
          CREATE ROLE tv_app LOGIN; END IF; END $$;
        DROP SCHEMA IF EXISTS helios CASCADE;
        DROP TABLE IF EXISTS tv_vault;
        CREATE TABLE tv_vault (tenant text, name text);
        INSERT INTO tv_vault VALUES ('acme', 'acme-vault'), ('globex', 'globex-vault');
        GRANT SELECT ON tv_vault TO tv_app;
        CREATE OR REPLACE FUNCTION tv_switch(t text) RETURNS text LANGUAGE sql AS
          $f$ SELECT set_config('helios.tenant', t, false) || set_config('helios.tenant_proof', t, false) $f$;
        CREATE OR REPLACE FUNCTION tv_switch_definer(t text) RETURNS text LANGUAGE sql SECURITY DEFINER AS
          $f$ SELECT set_config('helios.tenant', t, false) || set_config('helios.tenant_proof', t, false) $f$;
        GRANT EXECUTE ON FUNCTION tv_switch(text), tv_switch_definer(text) TO PUBLIC;
    """)
    yield conn
    conn.cursor().execute("DROP TABLE IF EXISTS tv_vault; DROP FUNCTION IF EXISTS tv_switch(text); "
                          "DROP FUNCTION IF EXISTS tv_switch_definer(text)")
    conn.close()


def install(proxy):
    out = subprocess.run([BIN, "tenancy", "install", "-c", proxy.config_path, "--database", "postgres"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module", params=["transaction", "session"])
def tproxy(request, cluster, vault, tmp_path_factory):
    from tests.fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path_factory.mktemp("tv")), cluster, pool={"mode": request.param, "max_size": 2},
                     tenancy={"enabled": True}, tenants=TENANTS)
    p.write_config()
    assert "helios.tenant() installed" in install(p)
    vault.cursor().execute("DROP POLICY IF EXISTS tv_rows ON tv_vault; ALTER TABLE tv_vault ENABLE ROW LEVEL SECURITY; "
                           "CREATE POLICY tv_rows ON tv_vault USING (tenant = helios.tenant())")
    p.start()
    yield p
    p.stop()


def connect(proxy, tenant, autocommit=True):
    conn = proxy.connect(user=f"tv_app.{tenant}")
    conn.autocommit = autocommit
    return conn


def rows(conn, sql=READ):
    cur = conn.cursor()
    cur.execute(sql)
    return cur.fetchone()[0]


def globex_rows_on_postgres(vault):
    cur = vault.cursor()
    cur.execute("select count(*) from tv_vault where tenant = 'globex'")
    return cur.fetchone()[0]


ESCAPES = [
    """set "helios"."tenant" = 'globex'""",
    """set helios/**/.tenant = 'globex'""",
    """set U&"helios\\002etenant" = 'globex'""",
    """set helios.tenant_proof = 'globex'""",
    """do $$ begin execute 'set hel' || 'ios.tenant = ''globex'''; end $$""",
    """do $$ begin execute format('set %s = %L', 'helios' || chr(46) || 'tenant_proof', 'globex'); end $$""",
    """select set_config(chr(104) || 'elios.tenant', 'globex', false)""",
    """select set_config('helios.tenant_' || 'proof', 'v1:' || pg_backend_pid() || ':globex:' || repeat('0', 64), false)""",
    """select tv_switch('globex')""",
    """select tv_switch_definer('globex')""",
    """create temp table if not exists tv_x as select set_config('helios.tenant_proof', 'globex', false)""",
]


@pytest.mark.parametrize("sql", ESCAPES)
def test_no_spelling_function_or_do_block_reads_another_tenants_rows(tproxy, vault, sql):
    assert globex_rows_on_postgres(vault) == 1
    for together in (False, True):
        conn = connect(tproxy, "acme", autocommit=not together)
        try:
            cur = conn.cursor()
            seen = []
            try:
                cur.execute(sql + "; " + READ) if not together else cur.execute(sql)
                if not together and cur.description:
                    seen.append(cur.fetchone()[0])
            except psycopg2.Error:
                conn.rollback()
            if together:  # SET LOCAL-like: in the open transaction
                try:
                    cur.execute(sql.replace("set ", "set local ", 1) if sql.startswith("set ") else sql)
                except psycopg2.Error:
                    conn.rollback()
            seen.append(rows(conn))
            assert not any("globex" in (s or "") for s in seen), (sql, seen)
        finally:
            conn.close()
    assert rows(connect(tproxy, "acme")) == "acme-vault"  # the next acme client: its own rows, untouched


def test_extended_protocol_set_and_one_query_set_and_read(tproxy, vault):
    import psycopg
    dsn = tproxy.dsn(user="tv_app.acme")
    with psycopg.connect(dsn, autocommit=True) as conn:  # a Parse/Bind/Execute of the SET
        assert conn.execute(READ, prepare=True).fetchone()[0] == "acme-vault"
        for sql, params in (("select set_config('helios.tenant_proof', %s, false)", ["globex"]),
                            ("set helios.tenant_proof to 'globex'", None)):
            try:  # (the tenant stage refuses what names set_config: 42501; the check must hold without it)
                conn.execute(sql, params, prepare=True)
            except psycopg.errors.InsufficientPrivilege:
                pass
        for _ in range(6):  # (psycopg 3 prepares by itself after 5 executions)
            assert "globex" not in conn.execute(READ).fetchone()[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(READ).fetchone()[0] == "acme-vault"
    with connect(tproxy, "globex") as conn:
        assert rows(conn) == "globex-vault"


def test_a_proof_from_another_session_or_key_is_refused(tproxy, vault):
    globex = connect(tproxy, "globex", autocommit=False)  # in a transaction: one backend throughout
    proof = rows(globex, "select current_setting('helios.tenant_proof')")
    pid = rows(globex, "select pg_backend_pid()")
    assert proof.startswith(f"v1:{pid}:globex:")
    assert rows(globex, "select helios.tenant()") == "globex"
    acme = connect(tproxy, "acme", autocommit=False)  # the other backend of the pool (max_size 2)
    acme_pid = rows(acme, "select pg_backend_pid()")
    assert acme_pid != pid
    wrong_key = f"v1:{acme_pid}:globex:" + hmac.new(os.urandom(32), f"v1:{acme_pid}:globex".encode(),
                                                      hashlib.sha256).hexdigest()
    for forged in (proof, wrong_key, f"v1:{acme_pid}:globex:{proof.rsplit(':', 1)[1]}"):
        cur = acme.cursor()
        cur.execute("set helios.tenant_proof = %s", [forged])  # (SET of it is not screened: PostgreSQL checks)
        assert rows(acme, "select coalesce(helios.tenant(), 'NULL')") == "NULL"
        assert rows(acme) == ""
    globex.rollback()
    acme.rollback()
    globex.close()
    acme.close()
    # a proof is never in a query text: nothing in pg_stat_activity carries one
    cur = vault.cursor()
    cur.execute("select count(*) from pg_stat_activity where pid <> pg_backend_pid() and query like '%v1:%'")
    assert cur.fetchone()[0] == 0


def test_nothing_a_tenant_leaves_on_a_server_outlives_its_lease(tproxy, vault):
    if tproxy.sections["pool"]["mode"] != "transaction":
        pytest.skip("session pooling: the lease is the session")
    innocent = {t: connect(tproxy, t) for t in ("acme", "globex")}  # logged in before: no proof made at login
    spoiler = connect(tproxy, "acme")
    for _ in range(5):
        rows(spoiler, "select tv_switch('garbage')")  # leaves a bad proof on its server connection
        rows(spoiler, "select tv_switch('globex')")
        for tenant in ("acme", "globex", "acme"):  # the next leases of that pool (max_size 2)
            assert rows(innocent[tenant]) == f"{tenant}-vault"


NAME_PARTS = st.tuples(st.sampled_from(["helios", "HELIOS", "Helios", '"helios"', 'U&"helios"', 'U&"hel\\0069os"']),
                       st.sampled_from([".", " . ", "/**/.", "/* x */ . "]),
                       st.sampled_from(["tenant", "TENANT", '"tenant"', "tenant_proof", '"tenant_proof"',
                                        'U&"tenant\\005fproof"', "Tenant_Proof"]))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(parts=NAME_PARTS, value=st.sampled_from(["globex", "v1:1:globex:" + "a" * 64]),
       how=st.sampled_from(["set", "set local", "set_config"]))
def test_generated_spellings_of_the_setting_never_reach_globex(tproxy, parts, value, how):
    name = "".join(parts)
    if how == "set_config":
        plain = name.replace('U&"hel\\0069os"', "helios").replace('U&"tenant\\005fproof"', "tenant_proof")
        plain = plain.replace('"', "").replace("/**/", "").replace("/* x */", "").replace(" ", "").lower()
        sql = f"select set_config('{plain}', '{value}', false)"
    else:
        sql = f"{how} {name} = '{value}'"
    conn = connect(tproxy, "acme", autocommit=how != "set local")
    try:
        try:
            conn.cursor().execute(sql)
        except psycopg2.Error:
            conn.rollback()
        assert "globex" not in rows(conn)
    finally:
        conn.close()


def test_install_is_idempotent_and_the_key_table_is_private(tproxy, cluster):
    install(tproxy)
    conn = tproxy.connect(user="tv_app.acme")
    conn.autocommit = True
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        conn.cursor().execute("select * from helios.key")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        conn.cursor().execute("create or replace function helios.tenant() returns text language sql as $$ select 'globex' $$")
    assert rows(conn, "select helios.tenant()") == "acme"
    conn.close()
