"""Transaction pooling never lets one client's identity, settings, bytes or errors reach another
client on the same server connection (one server connection, so every client shares it)."""
import psycopg
import pytest

from helios_proxy.protocol import codec


@pytest.fixture(scope="module")
def roles(cluster):
    cluster.sql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iso_alice') THEN "
                "CREATE ROLE iso_alice; END IF; END $$")
    cluster.sql("CREATE TABLE IF NOT EXISTS iso_t (a int); GRANT ALL ON iso_t TO iso_alice")
    return "iso_alice"


@pytest.fixture
def one(start_proxy):
    """Transaction pooling over exactly one server connection."""
    return start_proxy(pool={"mode": "transaction", "max_size": 1})


def autocommit(proxy, **kw):
    conn = proxy.connect(**kw)
    conn.autocommit = True
    return conn


def one_value(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    return cur.fetchone()[0]


IDENTITY = "select current_user || '/' || session_user"


@pytest.mark.parametrize("statement", ["SET SESSION AUTHORIZATION iso_alice", "SET ROLE iso_alice"])
def test_identity_changes_follow_their_client_and_never_reach_another(one, roles, statement):
    a, b = autocommit(one), autocommit(one)
    try:
        cur = a.cursor()
        cur.execute(statement)
        cur.execute("RESET ALL")  # undoes neither, in PostgreSQL
        seen_by_a = one_value(a, IDENTITY)
        assert "iso_alice" in seen_by_a
        assert one_value(b, IDENTITY) == "postgres/postgres"
        assert one_value(a, IDENTITY) == seen_by_a  # A keeps its identity on its next transaction
        cur.execute("RESET ROLE; SET SESSION AUTHORIZATION DEFAULT")
        assert one_value(a, IDENTITY) == "postgres/postgres"
    finally:
        a.close()
        b.close()


def test_startup_role_option_stays_with_its_client(one, roles):
    a = autocommit(one, options="-c role=iso_alice")
    b = autocommit(one)
    try:
        assert one_value(a, "select current_user") == "iso_alice"
        assert one_value(b, "select current_user") == "postgres"
        assert one_value(a, "select current_user") == "iso_alice"
    finally:
        a.close()
        b.close()


def test_set_config_inside_a_select_follows_its_client(one):
    a, b = autocommit(one), autocommit(one)
    try:
        one_value(a, "select 1, (select pg_catalog.set_config('search_path', 'leaked_schema', false)) as x")
        assert one_value(b, "show search_path") == '"$user", public'
        assert one_value(a, "show search_path") == "leaked_schema"
    finally:
        a.close()
        b.close()


def test_a_reported_setting_changed_by_a_function_does_not_reach_the_next_login(one):
    a = autocommit(one)
    try:
        one_value(a, "select count(*) from (select set_config('default_transaction_read_only', 'on', false)) s")
        c = autocommit(one)  # logs in after the change: greeted with the server's defaults
        try:
            assert c.get_parameter_status("default_transaction_read_only") == "off"
            cur = c.cursor()
            cur.execute("create temporary table if not exists x (a int) on commit drop")  # a write works
            assert one_value(c, "show default_transaction_read_only") == "off"
        finally:
            c.close()
        assert one_value(a, "show default_transaction_read_only") == "on"
    finally:
        a.close()


def test_a_prepared_statement_calling_set_config_follows_its_client(one):
    with psycopg.connect(one.dsn(), autocommit=True, prepare_threshold=0) as a, \
            psycopg.connect(one.dsn(), autocommit=True) as b:
        for i in range(3):  # prepared at the first execution, then Bind/Execute only
            a.execute("select pg_catalog.set_config('application_name', %s, false)", (f"app{i}",))
            assert b.execute("show application_name").fetchone()[0] == ""
        assert a.execute("show application_name").fetchone()[0] == "app2"


def test_settings_changed_by_a_do_block_follow_their_client(one):
    a, b = autocommit(one), autocommit(one)
    try:
        a.cursor().execute("DO $$ BEGIN EXECUTE 'SE' || 'T work_mem = ''7MB'''; END $$")
        assert one_value(b, "show work_mem") == "4MB"
        assert one_value(a, "show work_mem") == "7MB"
    finally:
        a.close()
        b.close()


def test_clients_that_leave_before_reading_their_reply_never_stall_the_next(one):
    """Query, then disconnect at once: the pump of that lease must end or park cleanly, never be
    handed the next lease dead (which hung that client and spun the proxy)."""
    import socket
    import threading
    for i in range(120):
        s = socket.create_connection(("127.0.0.1", one.port), timeout=10)
        s.sendall(codec.startup_message({"user": "postgres", "database": "postgres"}))
        data = b""
        while not data.endswith(codec.ready_for_query()):
            data += s.recv(4096)
        s.sendall(codec.query("select g from generate_series(1, %d) g" % (1 + i % 4 * 500)))
        if i % 2:
            s.shutdown(socket.SHUT_RDWR)
        s.close()
        if i % 5 == 0:
            result = []
            t = threading.Thread(target=lambda: result.append(one.query("select 42")), daemon=True)
            t.start()
            t.join(10)
            assert result == [[(42,)]], f"a client after {i + 1} early leavers hung"
    result = []
    t = threading.Thread(target=lambda: result.append(one.query("select 42")), daemon=True)
    t.start()
    t.join(10)
    assert result == [[(42,)]]


def test_api_sql_has_its_own_connections_and_passes_the_plugins(cluster, tmp_path, direct):
    """/api/sql never runs on a client's pooled connection (a set_config() there reached later
    clients, even their login ParameterStatus) and goes through the same stages as a client's
    query (a DELETE the guard refuses on the proxy port emptied the table through the API)."""
    import os
    from .fix_proxy import ProxyProcess
    log = tmp_path / "complete.log"
    proxy = ProxyProcess(str(tmp_path), cluster, pool={"mode": "transaction", "max_size": 1},
                         admin={"sql_enabled": True, "token": "test-token"},
                         plugins={"modules": ["tests.plugins.guard", "tests.plugins.rewrite"],
                                  "tests.plugins.guard": {"path": str(log)}})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proxy.start(env={"PYTHONPATH": root})
    try:
        client = autocommit(proxy)
        assert one_value(client, "select 1") == 1  # the pool's one server connection exists
        status, out = proxy.api("POST", "/api/sql", {"sql": "select pg_catalog.set_config('search_path', 'evil', "
                                                            "false), set_config('default_transaction_read_only', "
                                                            "'on', false)"})
        assert status == 200, out
        assert one_value(client, "show search_path") == '"$user", public'
        assert one_value(client, "show default_transaction_read_only") == "off"
        later = autocommit(proxy)
        assert later.get_parameter_status("default_transaction_read_only") == "off"
        later.close()
        direct.cursor().execute("drop table if exists guarded_t; create table guarded_t as select 1 as a")
        status, out = proxy.api("POST", "/api/sql", {"sql": "delete from guarded_t"})
        assert status == 400 and out["sqlstate"] == "P0001", out
        assert proxy.api("POST", "/api/sql", {"sql": "select 'rewrite me'"})[1]["rows"] == [["rewritten by a plugin"]]
        cur = direct.cursor()
        cur.execute("select count(*) from guarded_t")
        assert cur.fetchone()[0] == 1
        lines = log.read_text().splitlines()
        assert "postgres|delete from guarded_t|P0001" in lines
        assert any(line.startswith("postgres|select pg_catalog.set_config") and line.endswith("|None")
                   for line in lines), lines
        client.close()
    finally:
        proxy.stop()


def test_shared_prepared_statements_survive_a_schema_change(one, direct):
    """After ALTER TABLE, a shared server statement of `select * from t` is stale for every client
    (PostgreSQL: cached plan must not change result type). New clients must not inherit the error,
    and the client that saw it recovers on its next execution."""
    direct.cursor().execute("drop table if exists shared_t; create table shared_t (a int); "
                            "insert into shared_t values (1)")
    with psycopg.connect(one.dsn(), autocommit=True, prepare_threshold=0) as a:
        for _ in range(3):
            assert a.execute("select * from shared_t").fetchall() == [(1,)]
        direct.cursor().execute("alter table shared_t add column b int default 7")
        errors = 0
        for _ in range(3):
            try:
                assert a.execute("select * from shared_t").fetchall() == [(1, 7)]
            except psycopg.errors.FeatureNotSupported:  # PostgreSQL's own answer, once
                errors += 1
        assert errors <= 1
    for _ in range(3):  # new clients of the same pool, same text: never the stale statement
        with psycopg.connect(one.dsn(), autocommit=True, prepare_threshold=0) as c:
            assert c.execute("select * from shared_t").fetchall() == [(1, 7)]


def test_ddl_through_the_proxy_makes_shared_statements_reparse_before_their_next_use(one, direct):
    direct.cursor().execute("drop table if exists ddl_t; create table ddl_t (a int); insert into ddl_t values (1)")
    with psycopg.connect(one.dsn(), autocommit=True, prepare_threshold=0) as a, \
            psycopg.connect(one.dsn(), autocommit=True) as b:
        for _ in range(3):
            assert a.execute("select * from ddl_t").fetchall() == [(1,)]
        b.execute("alter table ddl_t add column b int default 7")
        for _ in range(3):  # no client sees "cached plan must not change result type"
            assert a.execute("select * from ddl_t").fetchall() == [(1, 7)]


def test_a_large_copy_data_outside_copy_never_reaches_another_client(one, direct):
    """A Query and then a large CopyData outside COPY (PostgreSQL ignores it): the CopyData is not
    streamed, so no byte of it can follow the lease's server to the next client."""
    import socket
    direct.cursor().execute("drop table if exists iso_copy; create table iso_copy (a text)")
    s = socket.create_connection(("127.0.0.1", one.port), timeout=10)
    s.sendall(codec.startup_message({"user": "postgres", "database": "postgres"}))
    data = b""
    while not data.endswith(codec.ready_for_query()):
        data += s.recv(4096)
    payload = codec.message(b"d", b"evil\n" * (600 << 10))  # 3 MiB
    s.sendall(codec.query("select 1") + payload[:1 << 20])
    import threading
    rest = threading.Timer(0.5, s.sendall, (payload[1 << 20:],))  # the lease waits for the last byte
    rest.start()
    b = autocommit(one)
    try:
        assert one_value(b, "select 'innocent'") == "innocent"
        rest.join()
        for _ in range(5):
            assert one_value(b, "select count(*) from iso_copy") == 0
    finally:
        s.close()
        b.close()
