"""Transaction and statement pooling: many clients over few server connections, without the
application noticing (settings, prepared statements, locks, cancel, pinning)."""
import os
import socket
import threading
import time

import psycopg
import psycopg2
import pytest

from helios_proxy.protocol import codec

from .wire import Wire, error_of


def server_connections(direct, app=""):
    cur = direct.cursor()
    cur.execute("select count(*) from pg_stat_activity where backend_type = 'client backend' "
                "and pid <> pg_backend_pid() and datname = 'postgres' and usename = 'postgres' "
                "and client_port is not null and application_name = %s", (app,))
    return cur.fetchone()[0]


def transcript(port, steps, kept=(b"D",)):
    """What a client sees for each step (bytes sent, up to a ReadyForQuery): the message types, the
    SQLSTATE of an error, the bodies of the kept types. Compared, proxy against PostgreSQL."""
    w = Wire(port)
    w.startup(user="postgres", database="postgres")
    out = []
    for step in steps:
        w.send(step)
        msgs = w.until_ready()
        err = error_of(msgs)
        out.append(([t for t, _ in msgs], err and err["C"], [b for t, b in msgs if t in kept]))
    w.close()
    return out


def run_threads(n, target):
    errors = []

    def wrapped(i):
        try:
            target(i)
        except BaseException as e:  # reported by the caller (pytest's failures are BaseExceptions)
            errors.append(repr(e))
    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


@pytest.fixture
def txn(start_proxy):
    return start_proxy(pool={"mode": "transaction", "max_size": 5})


def test_200_clients_over_5_server_connections_exactly_once(txn, direct):
    d = direct.cursor()
    d.execute("drop table if exists pool_counts; create table pool_counts(id int primary key, n int)")
    d.execute("insert into pool_counts select g, 0 from generate_series(1, 20) g")
    peak = [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], server_connections(direct))
            time.sleep(0.02)
    watcher = threading.Thread(target=watch)
    watcher.start()

    def client(i):
        conn = txn.connect()
        for j in range(10):
            cur = conn.cursor()
            cur.execute("update pool_counts set n = n + 1 where id = %s", ((i + j) % 20 + 1,))
            cur.execute("select pg_sleep(0.001)")
            conn.commit()
        conn.close()
    errors = run_threads(200, client)
    done.set()
    watcher.join()
    assert not errors, errors[:3]
    d.execute("select sum(n) from pool_counts")
    assert d.fetchone()[0] == 2000
    assert peak[0] <= 5


def test_psycopg3_auto_prepare_shares_servers_without_pinning(txn, direct):
    pids_seen = []

    def client(i):
        with psycopg.connect(txn.dsn(), prepare_threshold=0) as conn:
            pids = set()
            for k in range(30):
                row = conn.execute("select %s::int * 2, pg_backend_pid()", (k,)).fetchone()
                assert row[0] == 2 * k
                pids.add(row[1])
                conn.commit()
            pids_seen.append(len(pids))
    errors = run_threads(20, client)
    assert not errors, errors[:3]
    assert max(pids_seen) > 1  # clients moved between server connections: not pinned
    assert "pinned" not in txn.output()
    cur = direct.cursor()
    cur.execute("select count(*) from pg_stat_activity where query like 'select $1::int * 2%'")
    assert cur.fetchone()[0] <= 5


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_in_transaction_mode(start_proxy, pgbench, mode):
    """More clients than server connections; -M prepared works (PgBouncer before 1.21 fails it)."""
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 3})
    pgbench(proxy.port, mode, clients=8, transactions=100)


def test_killed_client_leaves_no_lock_or_transaction(txn, direct):
    d = direct.cursor()
    d.execute("drop table if exists pool_locks; create table pool_locks(id int primary key); "
              "insert into pool_locks values (1)")
    conn = txn.connect(application_name="killed")
    cur = conn.cursor()
    cur.execute("select * from pool_locks where id = 1 for update")
    cur.execute("select pg_advisory_xact_lock(42), pg_backend_pid()")
    pid = cur.fetchone()[1]
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        d.execute("select count(*) from pg_locks where pid = %s and locktype in ('advisory', 'transactionid')",
                  (pid,))
        locks = d.fetchone()[0]
        d.execute("select coalesce(state, 'gone') from pg_stat_activity where pid = %s", (pid,))
        state = (d.fetchone() or ["gone"])[0]
        if locks == 0 and state in ("idle", "gone"):
            break
        time.sleep(0.05)
    assert (locks, state in ("idle", "gone")) == (0, True)
    other = txn.connect()
    ocur = other.cursor()
    ocur.execute("select * from pool_locks where id = 1 for update nowait")
    other.commit()


def test_settings_follow_the_client_and_never_leak(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1})  # every client shares one server
    a = proxy.connect(application_name="client-a")
    a.autocommit = True
    b = proxy.connect(application_name="client-b")
    b.autocommit = True
    ca, cb = a.cursor(), b.cursor()
    ca.execute("set search_path = pool_schema, public")
    ca.execute("set statement_timeout = 7000")
    cb.execute("set local statement_timeout = 1")  # local: gone with its implicit transaction
    for _ in range(5):
        ca.execute("select current_setting('search_path'), current_setting('statement_timeout'), "
                   "current_setting('application_name')")
        assert ca.fetchone() == ("pool_schema, public", "7s", "client-a")
        cb.execute("select current_setting('search_path'), current_setting('statement_timeout'), "
                   "current_setting('application_name')")
        assert cb.fetchone() == ('"$user", public', "0", "client-b")
    ca.execute("reset statement_timeout")
    ca.execute("show statement_timeout")
    assert ca.fetchone()[0] == "0"
    ca.execute("show search_path")
    assert ca.fetchone()[0] == "pool_schema, public"


def test_parameter_status_stays_consistent(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1})
    with psycopg.connect(proxy.dsn(application_name="first"), autocommit=True) as a, \
            psycopg.connect(proxy.dsn(application_name="second"), autocommit=True) as b:
        a.execute("set application_name = 'renamed'")
        b.execute("select 1")
        assert a.info.parameter_status("application_name") == "renamed"
        assert b.info.parameter_status("application_name") == "second"
        assert a.execute("show application_name").fetchone()[0] == "renamed"


def test_statement_mode_refuses_transactions(start_proxy):
    proxy = start_proxy(pool={"mode": "statement", "max_size": 2})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        cur = conn.execute("select 1; select 2")
        assert cur.nextset() and cur.fetchone()[0] == 2
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="statement pooling"):
            conn.execute("begin")
        assert conn.execute("select 'still usable'").fetchone()[0] == "still usable"
    with pytest.raises(psycopg2.errors.FeatureNotSupported):
        proxy.connect().cursor().execute("select 1")  # psycopg2 opens a transaction first


def test_listen_pins_the_client_and_notifications_arrive(txn):
    listener = txn.connect()
    listener.autocommit = True
    listener.cursor().execute("listen pool_chan")
    sender = txn.connect()
    sender.autocommit = True
    sender.cursor().execute("notify pool_chan, 'hi'")
    import select
    deadline = time.time() + 10
    while not listener.notifies and time.time() < deadline:
        select.select([listener], [], [], 0.5)
        listener.poll()
    assert listener.notifies and listener.notifies[0].payload == "hi"
    assert "pinned to its server connection: it uses LISTEN" in txn.output()


def test_temp_table_and_with_hold_cursor_pin(txn):
    conn = txn.connect()
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("create temp table pin_t(i int)")
    for i in range(5):
        cur.execute("insert into pin_t values (%s)", (i,))
    cur.execute("select count(*) from pin_t")
    assert cur.fetchone()[0] == 5
    other = txn.connect()
    other.autocommit = True
    other.cursor().execute("declare c cursor with hold for select generate_series(1, 3)")
    c2 = other.cursor()
    c2.execute("fetch all from c")
    assert [r[0] for r in c2.fetchall()] == [1, 2, 3]


def test_cancel_running_query_in_transaction_mode(txn):
    conn = txn.connect()
    threading.Timer(0.5, conn.cancel).start()
    with pytest.raises(psycopg2.errors.QueryCanceled):
        conn.cursor().execute("select pg_sleep(20)")
    conn.rollback()


def test_cancel_while_waiting_for_a_server_leaves_the_queue(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1, "acquire_timeout": 30})
    holder = proxy.connect()
    holder.cursor().execute("select 1")  # holds the only server in an open transaction
    waiter = proxy.connect()
    threading.Timer(0.5, waiter.cancel).start()
    started = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled):
        waiter.cursor().execute("select 'never ran'")
    assert time.monotonic() - started < 10
    waiter.rollback()
    holder.commit()
    cur = waiter.cursor()
    cur.execute("select 'after'")
    assert cur.fetchone()[0] == "after"


def test_prepared_statement_errors_match_postgres(cluster, txn):
    steps = [
        codec.parse("select $1::int", name="a") + codec.SYNC,
        codec.parse("select 2", name="a") + codec.SYNC,                       # 42P05
        codec.bind(["1"], statement="nope") + codec.execute() + codec.SYNC,   # 26000
        codec.parse("selec oops", name="bad") + codec.SYNC,                   # 42601
        codec.parse("select 'bad ok'", name="bad") + codec.SYNC,              # name free again
        codec.bind([], statement="bad") + codec.execute() + codec.SYNC,
        codec.message(b"C", b"Sa\0") + codec.SYNC,
        codec.parse("select 'a again'", name="a") + codec.bind([], statement="a") + codec.execute()
        + codec.SYNC,
        codec.query("deallocate a"),
        codec.bind([], statement="a") + codec.execute() + codec.SYNC,         # 26000 after DEALLOCATE
        codec.query("discard all"),
        codec.bind([], statement="bad") + codec.execute() + codec.SYNC,       # 26000 after DISCARD ALL
        codec.parse("select 'fresh'", name="bad") + codec.bind([], statement="bad") + codec.execute()
        + codec.SYNC,
    ]
    assert transcript(txn.port, steps) == transcript(cluster.primary_port, steps)


@pytest.mark.parametrize("discard", [codec.query("discard all"),
                                     codec.parse("DISCARD ALL") + codec.bind([]) + codec.execute() + codec.SYNC],
                         ids=["simple", "extended"])
def test_a_discard_all_leaves_no_other_client_a_statement_the_server_dropped(start_proxy, discard):
    """DISCARD ALL drops every prepared statement of the server connection it runs on, those other
    clients share on it too: the proxy forgets them there, and the next client that prepares one
    of them on that connection has it parsed again (it got 26000 from the server when the fast path
    took the DISCARD ALL: the statement's record was kept)."""
    one = start_proxy(pool={"mode": "transaction", "max_size": 1})  # (one server connection for both)
    a, b = Wire(one.port), Wire(one.port)
    try:
        for w in (a, b):
            w.startup(user="postgres", database="postgres")
        run = codec.parse("select 'shared'", name="s") + codec.bind([], statement="s") + codec.execute() + codec.SYNC
        a.send(run)
        assert error_of(a.until_ready()) is None
        a.send(discard)
        assert error_of(a.until_ready()) is None
        b.send(run)
        answer = b.until_ready()
        assert error_of(answer) is None
        assert (b"D", b"\0\1\0\0\0\x06shared") in answer
        a.send(run)  # (its own statement went with its DISCARD ALL: parsed anew)
        assert error_of(a.until_ready()) is None
    finally:
        a.close()
        b.close()


def test_statements_the_proxy_answers_in_the_extended_protocol_match_postgres(cluster, txn):
    """DEALLOCATE under transaction pooling is the proxy's to answer (the client's statements are
    its own): through the extended protocol, as psycopg 3, asyncpg and JDBC send it, unnamed or
    prepared by name, alone or in a batch with the server's statements, in and out of a
    transaction, the client gets what PostgreSQL sends (it got 0A000 before)."""
    describe_statement = codec.message(b"D", b"S\0")

    steps = [
        codec.query("PREPARE p1 AS select 1"),
        codec.query("PREPARE p2 AS select 2"),
        codec.parse("DEALLOCATE p1") + codec.bind([]) + codec.describe_portal() + codec.execute() + codec.SYNC,
        codec.query("EXECUTE p2"),
        codec.query("EXECUTE p1"),                                                       # 26000
        codec.parse("DEALLOCATE ALL") + describe_statement + codec.bind([]) + codec.execute() + codec.SYNC,
        codec.query("EXECUTE p2"),                                                       # 26000
        codec.query("PREPARE p3 AS select 3"),
        codec.parse("DEALLOCATE p3", name="d3") + codec.SYNC,
        codec.bind([], statement="d3") + codec.execute() + codec.SYNC,
        codec.query("EXECUTE p3"),                                                       # 26000
        codec.bind([], statement="d3") + codec.execute() + codec.SYNC,                  # 26000 again
        codec.parse("select 1", name="d3") + codec.SYNC,                                 # 42P05
        codec.message(b"C", b"Sd3\0") + codec.SYNC,
        codec.bind([], statement="d3") + codec.execute() + codec.SYNC,                  # 26000: closed
        codec.parse("select 'before'") + codec.bind([]) + codec.execute()               # one batch, in order
        + codec.parse("DEALLOCATE ALL") + codec.bind([]) + codec.execute()
        + codec.parse("select 'after'") + codec.bind([]) + codec.execute() + codec.SYNC,
        codec.query("BEGIN"),
        codec.query("PREPARE p4 AS select 4"),
        codec.parse("select 'in'") + codec.bind([]) + codec.execute()
        + codec.parse("DEALLOCATE p4", name="d4") + codec.bind([], statement="d4") + codec.describe_portal()
        + codec.execute() + codec.SYNC,
        codec.query("COMMIT"),
        codec.query("EXECUTE p4"),                                                       # 26000
        codec.bind([], statement="") + codec.execute() + codec.SYNC,                    # the unnamed: 'after'
        codec.query("select 'simple'"),
        codec.bind([], statement="") + codec.execute() + codec.SYNC,                    # 26000: destroyed
    ]
    kept = (b"D", b"C", b"Z")
    assert transcript(txn.port, steps, kept) == transcript(cluster.primary_port, steps, kept)


def test_an_error_the_proxy_gives_inside_a_transaction_fails_it_as_postgres_does(cluster, txn):
    """An error is an error, whoever raises it: inside a transaction block PostgreSQL's transaction
    fails (ReadyForQuery 'E', later statements 25P02, the COMMIT rolls back). The proxy's own errors
    (EXECUTE or Bind of a statement that does not exist, a duplicate name: 26000, 42P05) left the
    server's transaction going, and the client's COMMIT stored what it had done before."""
    steps = [
        codec.query("truncate failed_txn"),
        codec.query("BEGIN"),
        codec.query("insert into failed_txn values ('simple')"),
        codec.query("EXECUTE nosuch"),                                                   # 26000
        codec.query("select 1"),                                                         # 25P02
        codec.query("COMMIT"),                                                           # ROLLBACK
        codec.query("BEGIN"),
        codec.query("insert into failed_txn values ('extended')"),
        codec.parse("select 1") + codec.bind([]) + codec.execute()
        + codec.bind([], statement="nosuch") + codec.execute() + codec.SYNC,            # 26000
        codec.query("COMMIT"),                                                           # ROLLBACK
        codec.query("BEGIN"),
        codec.query("insert into failed_txn values ('savepoint')"),
        codec.query("SAVEPOINT s"),
        codec.query("DEALLOCATE nosuch"),                                                # 26000
        codec.query("ROLLBACK TO SAVEPOINT s"),
        codec.query("COMMIT"),                                                           # stored
        codec.query("select v from failed_txn"),
    ]
    transcript(cluster.primary_port, [codec.query("drop table if exists failed_txn; create table failed_txn (v text)")])
    kept = (b"D", b"C", b"Z")
    assert transcript(txn.port, steps, kept) == transcript(cluster.primary_port, steps, kept)


def test_settings_a_prepared_statement_changes_follow_its_client(txn):
    """SET and set_config() prepared by name (psycopg 3 with prepare_threshold=0; a comment may
    come first, as ORMs add) carry the client's settings to whichever server connection its next
    transactions get, and to no other client; a prepared UPDATE ... SET is no settings change."""
    with psycopg.connect(txn.dsn(), prepare_threshold=0, autocommit=True) as conn, \
            psycopg.connect(txn.dsn(), prepare_threshold=0, autocommit=True) as other:
        conn.execute("create table if not exists prepared_sets (id int primary key, v int)")
        conn.execute("insert into prepared_sets values (1, 0) on conflict do nothing")
        conn.execute("select set_config('application_name', %s, false)", ("prepared-app",))
        for i in range(20):
            # each statement is parsed once, then only bound: the Bind's execution carries the SET
            value = "999ms" if i % 2 else "1234ms"
            conn.execute(f"/* orm */ SET statement_timeout = '{value}'")
            with other.transaction():  # (holds a server connection: the next ones may differ)
                other.execute("update prepared_sets set v = %s where id = 1", (i,))
                assert conn.execute("show statement_timeout").fetchone() == (value,)
                assert conn.execute("show application_name").fetchone() == ("prepared-app",)
            assert other.execute("show statement_timeout").fetchone() not in (("1234ms",), ("999ms",))
            assert other.execute("show application_name").fetchone() != ("prepared-app",)


def test_server_statements_are_shared_and_capped(start_proxy, direct):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1, "prepared_statements_cap": 2})

    def client(i):
        with psycopg.connect(proxy.dsn(), prepare_threshold=0, autocommit=True) as conn:
            for k in range(12):
                q = f"select {k % 4} + %s::int"
                assert conn.execute(q, (i,)).fetchone()[0] == k % 4 + i
    errors = run_threads(4, client)
    assert not errors, errors[:3]
    w = Wire(proxy.port)
    w.startup(user="postgres", database="postgres")
    w.send(codec.query("select count(*) from pg_prepared_statements"))
    rows = [b for t, b in w.until_ready() if t == b"D"]
    assert int(codec.parse_data_row(rows[0])[0]) <= 2
    w.close()


def test_mode_per_database_and_per_user(start_proxy, cluster):
    proxy = start_proxy(pool={"mode": "session", "max_size": 1},
                        databases={"app": {"mode": "transaction"}},
                        users={"app": {"mode": "statement"}})
    # postgres/postgres: session pooling, the real backend pid
    s = proxy.connect()
    cur = s.cursor()
    cur.execute("select pg_backend_pid()")
    assert cur.fetchone()[0] == s.get_backend_pid()
    s.close()
    # database app as postgres: transaction pooling, two clients share the one server connection
    a, b = proxy.connect(dbname="app"), proxy.connect(dbname="app")
    for c in (a, b, a, b):
        cur = c.cursor()
        cur.execute("select current_database()")
        assert cur.fetchone()[0] == "app"
        c.commit()
    # user app: statement pooling, whatever the database
    with psycopg.connect(proxy.dsn(user="app", dbname="app"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("begin")


def test_max_db_connections_across_users(start_proxy, direct):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 5, "max_db_connections": 1})
    a = proxy.connect(application_name="cap-a")
    a.cursor().execute("select 1")  # holds the database's only server connection in a transaction
    result = {}

    def other_user():
        conn = proxy.connect(user="app", application_name="cap-b")
        cur = conn.cursor()
        cur.execute("select current_user")
        result["user"] = cur.fetchone()[0]
        conn.commit()
    t = threading.Thread(target=other_user)
    t.start()
    time.sleep(0.5)
    assert "user" not in result  # waits: the database is at its limit
    a.commit()  # a's connection goes idle; the proxy closes it to make room for user app
    t.join(10)
    assert result["user"] == "app"


def test_reserve_pool_serves_a_client_that_waited(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1, "reserve_size": 1, "reserve_timeout": 0.3})
    holder = proxy.connect()
    holder.cursor().execute("select 1")
    started = time.monotonic()
    other = proxy.connect()
    cur = other.cursor()
    cur.execute("select 'from the reserve'")
    assert cur.fetchone()[0] == "from the reserve"
    assert 0.25 < time.monotonic() - started < 5
    other.commit()
    holder.commit()


def test_sql_prepare_execute_deallocate_without_pinning(start_proxy, cluster):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 2})

    def exchange(port):
        w = Wire(port)
        w.startup(user="postgres", database="postgres")
        out = []
        for sql in ["PREPARE p1 (int) AS SELECT $1 * 10",
                    "EXECUTE p1(4)",
                    "PREPARE p1 AS SELECT 2",                 # 42P05
                    "EXECUTE nope(1)",                        # 26000
                    "PREPARE bad AS SELEC 1",                 # syntax error: bad stays undefined
                    "EXECUTE bad",
                    "PREPARE p2 (text) AS SELECT upper($1)",
                    "EXPLAIN (COSTS OFF) EXECUTE p2('x')",
                    "DEALLOCATE p1",
                    "EXECUTE p1(1)",                          # 26000 again
                    "DEALLOCATE ALL",
                    "EXECUTE p2('y')"]:
            w.send(codec.query(sql))
            msgs = w.until_ready()
            err = error_of(msgs)
            out.append((sql, err and err["C"], [b for t, b in msgs if t == b"D"]))
        w.close()
        return out
    via = exchange(proxy.port)
    assert via == exchange(cluster.primary_port)
    assert via[1][2] == [b"\x00\x01\x00\x00\x00\x0240"]
    assert "pinned" not in proxy.output()


def test_sql_prepared_statement_follows_the_client_across_servers(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 3})
    holders = []
    conn = proxy.connect()
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("PREPARE q (int) AS SELECT $1 + 1, pg_backend_pid()")
    pids = set()
    for i in range(3):
        other = proxy.connect()
        other.cursor().execute("select 1")  # holds a server connection in a transaction
        holders.append(other)
        cur.execute("EXECUTE q(%s)", (i,))
        value, pid = cur.fetchone()
        assert value == i + 1
        pids.add(pid)
        if len(holders) == 2:
            break
    assert len(pids) >= 2


def test_mixed_workload_soak_leaves_pool_clean(start_proxy, direct):
    """30 clients for a few seconds: auto-prepare, pipelines, errors, SET, cancels, killed clients,
    SQL PREPARE, over 4 server connections. No client error, the pool ends idle and within bounds."""
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 4, "acquire_timeout": 20})
    dsn = proxy.dsn()
    stop = time.time() + 6

    def worker(i):
        import random
        rng = random.Random(i)
        for _ in range(200):  # bounded in count as well as time
            if time.time() > stop:
                return
            kind = rng.randrange(6)
            try:
                one(i, kind, rng)
            except Exception as e:
                raise AssertionError(f"kind {kind}: {e!r}") from e

    def one(i, kind, rng):
        if True:
            if kind == 0:
                with psycopg.connect(dsn, prepare_threshold=0, autocommit=True) as c:
                    for k in range(rng.randrange(1, 10)):
                        assert c.execute("select %s::int + 1", (k,)).fetchone()[0] == k + 1
            elif kind == 1:
                with psycopg.connect(dsn) as c:
                    with c.pipeline():
                        curs = [c.execute("select %s::text", (str(k),)) for k in range(10)]
                    assert [cur.fetchone()[0] for cur in curs] == [str(k) for k in range(10)]
                    c.commit()
            elif kind == 2:
                c = psycopg2.connect(dsn)
                cur = c.cursor()
                with pytest.raises(psycopg2.errors.DivisionByZero):
                    cur.execute("select 1/0")
                c.rollback()
                cur.execute("set statement_timeout = 5000")
                c.commit()
                cur.execute("select current_setting('statement_timeout')")
                assert cur.fetchone()[0] == "5s"
                c.close()
            elif kind == 3:  # the cancel may also come before the query runs: then it has no effect
                c = psycopg2.connect(dsn)
                c.autocommit = True
                timer = threading.Timer(0.05, c.cancel)
                timer.start()
                try:
                    c.cursor().execute("select pg_sleep(0.5)")
                except psycopg2.errors.QueryCanceled:
                    pass
                finally:
                    timer.cancel()
                    timer.join()
                    c.close()
            elif kind == 4:
                c = psycopg2.connect(dsn)
                c.cursor().execute("select 1")
                s = socket.socket(fileno=os.dup(c.fileno()))
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            else:
                c = psycopg2.connect(dsn)
                c.autocommit = True
                cur = c.cursor()
                cur.execute(f"prepare q{i} (int) as select $1")
                cur.execute(f"execute q{i}(3)")
                assert cur.fetchone()[0] == 3
                c.close()
    errors = run_threads(30, worker)
    assert not errors, sorted(set(errors))[:5]
    deadline = time.time() + 10
    while time.time() < deadline:
        cur = direct.cursor()
        cur.execute("select count(*), count(*) filter (where state <> 'idle') from pg_stat_activity "
                    "where backend_type = 'client backend' and pid <> pg_backend_pid() "
                    "and datname = 'postgres' and client_port is not null and application_name = ''")
        total, busy = cur.fetchone()
        if busy == 0:
            break
        time.sleep(0.1)
    cur.execute("select state, query from pg_stat_activity where backend_type = 'client backend' "
                "and pid <> pg_backend_pid() and datname = 'postgres' and state <> 'idle'")
    assert (busy, total <= 4) == (0, True), cur.fetchall()
    assert proxy.connect().closed == 0


@pytest.mark.parametrize("cancels", [1, 3])
def test_a_late_cancel_never_hits_the_next_client_of_the_connection(start_proxy, cancels):
    """A cancel request racing the end of its query must not cancel what the next client runs on
    the same server connection (pool of one): the connection waits until the server took it, and
    every one of several concurrent cancel requests of the client."""
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1})
    a, b = proxy.connect(), proxy.connect()
    a.autocommit = b.autocommit = True
    stop, hit = threading.Event(), []

    def other():
        cur = b.cursor()
        while not stop.is_set():
            try:
                cur.execute("SELECT pg_sleep(0.002)")
            except psycopg2.errors.QueryCanceled:
                hit.append(1)
    t = threading.Thread(target=other)
    t.start()
    try:
        for i in range(150):
            timers = [threading.Timer(0.004 + (i % 5) * 0.001, a.cancel) for _ in range(cancels)]
            for timer in timers:
                timer.start()
            try:
                a.cursor().execute("SELECT pg_sleep(0.005)")
            except psycopg2.errors.QueryCanceled:
                pass
            for timer in timers:
                timer.join()
    finally:
        stop.set()
        t.join(30)
    assert not hit


@pytest.mark.parametrize("second", [
    codec.parse("select 2", name="s1"),       # a duplicate name: 42P05 from the proxy
    codec.parse("EXECUTE s1", name=""),       # SQL EXECUTE of a protocol-level statement: 26000
    codec.parse("DEALLOCATE nosuch", name=""),  # 26000
])
def test_proxy_errors_in_the_extended_protocol_arrive_on_flush(txn, second):
    """PostgreSQL sends an error at once (Flush or not) and then ignores everything up to Sync."""
    w = Wire(txn.port)
    try:
        w.startup(user="postgres", database="postgres")
        w.send(codec.parse("select 1", name="s1") + codec.message(b"H"))
        assert w.read()[0] == b"1"
        w.send(second + codec.bind([], statement="s1") + codec.message(b"H"))
        mtype, body = w.read()  # would wait forever before the fix
        assert mtype == b"E", (mtype, body)
        assert codec.parse_fields(body)["C"] in ("42P05", "26000")
        w.send(codec.SYNC)
        assert w.read()[0] == b"Z"  # the Bind after the error was skipped: no BindComplete
        w.send(codec.bind([], statement="s1") + codec.execute() + codec.SYNC)
        assert [t for t, _ in w.until_ready()] == [b"2", b"D", b"C", b"Z"]
    finally:
        w.close()


def test_session_mode_cancel_is_delivered_before_its_connection_closes(start_proxy):
    """libpq's cancel returns when the proxy closes the cancel connection: by then the backend must
    have taken it, or it cancels the client's next query instead."""
    proxy = start_proxy(pool={"mode": "session", "max_size": 2})
    conn = proxy.connect()
    conn.autocommit = True
    cur = conn.cursor()
    hit = 0
    for _ in range(30):
        conn.cancel()  # nothing runs: PostgreSQL ignores it, if it gets it now
        try:
            cur.execute("SELECT pg_sleep(0.02)")
        except psycopg2.errors.QueryCanceled:
            hit += 1
    conn.close()
    assert hit == 0


def test_cancel_requests_are_rate_limited_and_logged_in_summary(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 2})
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(codec.special_request(80877102, 1000 + i, 4242))
        assert s.recv(16) == b""
        s.close()
    log = proxy.output()
    assert log.count("cancel request") <= 2, log  # not one line per bogus request
    assert proxy.query("select 1") == [(1,)]


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_large_copy_data_is_streamed_and_large_held_messages_refused(start_proxy, direct, mode):
    """A CopyData message larger than server.max_message_size passes (streamed, never held whole);
    a Bind that large, which the proxy must hold, is refused with 08P01 as soon as its header says so."""
    proxy = start_proxy(pool={"mode": mode, "max_size": 2}, server={"max_message_size": 1 << 20})
    direct.cursor().execute("drop table if exists copy_big; create table copy_big (a int, b text)")
    rows = 40000
    payload = b"".join(b"%d\t%s\n" % (i, b"y" * 100) for i in range(rows))
    assert len(payload) > 4 << 20
    w = Wire(proxy.port)
    try:
        w.startup(user="postgres", database="postgres")
        w.send(codec.query("copy copy_big from stdin"))
        assert w.read()[0] == b"G"
        w.send(codec.message(b"d", payload[:len(payload) // 2]) + codec.message(b"d", payload[len(payload) // 2:])
               + codec.message(b"c"))
        answer = w.until_ready()
        assert (b"C", b"COPY %d\0" % rows) in answer, answer[:3]
        w.send(codec.message(b"B", b"\0\0" + b"\0" * (2 << 20))[:65536])  # its header says 2 MiB
        fields = error_of([w.read()])
        assert fields["C"] == "08P01" and "max_message_size" in fields["M"]
    finally:
        w.close()
    cur = direct.cursor()
    cur.execute("select count(*) from copy_big")
    assert cur.fetchone()[0] == rows
