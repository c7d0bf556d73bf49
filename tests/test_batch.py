"""Batch INSERT coalescing ([batch], batch/) end to end: many clients' single-row INSERTs become
multi-row INSERTs, yet each client gets exactly its own tag, RETURNING row or error, every row is
stored once, and what must not be batched is not (transactions, row triggers, other settings,
sessions using currval)."""
import signal
import threading
import time

import psycopg2
import pytest

from .background import Background


@pytest.fixture
def batch_proxy(start_proxy, direct):
    direct.cursor().execute(
        "DROP TABLE IF EXISTS bt_events, bt_keys, bt_skip; DROP SCHEMA IF EXISTS bt_a, bt_b CASCADE; "
        "CREATE TABLE bt_events (id bigserial PRIMARY KEY, client int NOT NULL, payload text); "
        "CREATE TABLE bt_keys (id int PRIMARY KEY); CREATE TABLE bt_skip (x int); "
        "CREATE FUNCTION pg_temp.x() RETURNS int LANGUAGE sql AS 'SELECT 1'; "
        "CREATE OR REPLACE FUNCTION bt_skip_negative() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN IF NEW.x < 0 THEN RETURN NULL; END IF; RETURN NEW; END$$; "
        "CREATE TRIGGER bt_skip_negative BEFORE INSERT ON bt_skip FOR EACH ROW EXECUTE FUNCTION bt_skip_negative(); "
        "CREATE SCHEMA bt_a; CREATE SCHEMA bt_b; CREATE TABLE bt_a.bt_where (x int); "
        "CREATE TABLE bt_b.bt_where (x int)")
    return start_proxy(pool={"mode": "transaction", "max_size": 8},
                       batch={"enabled": True, "tables": ["bt_*"], "max_delay_ms": 20})


def connect(proxy, **kw):
    conn = proxy.connect(**kw)
    conn.autocommit = True
    return conn


def together(n, fn):
    """Run fn(i) in n threads released at once; their results (or exceptions) by i."""
    barrier, out = threading.Barrier(n), {}

    def run(i):
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - compared by the caller
            out[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_inserts_are_coalesced_and_each_client_gets_its_own_answer(batch_proxy, direct):
    conns = [connect(batch_proxy) for _ in range(16)]

    def insert(i):
        cur = conns[i].cursor()
        cur.execute("insert into bt_events (client, payload) values (%s, %s) returning client, payload", (i, f"p{i}"))
        mine = cur.fetchall()
        cur.execute("insert into bt_events (client, payload) values (%s, 'plain')", (i,))
        return mine, cur.rowcount, cur.statusmessage
    results = together(16, insert)
    for i, (mine, count, tag) in results.items():
        assert mine == [(i, f"p{i}")] and count == 1 and tag == "INSERT 0 1"
    cur = direct.cursor()
    cur.execute("SELECT client, count(*) FROM bt_events GROUP BY client ORDER BY client")
    assert cur.fetchall() == [(i, 2) for i in range(16)]
    status, state = batch_proxy.api("GET", "/batch")
    assert status == 200 and state["rows"] == 32 and state["batches"] < 32  # (coalesced)
    # the table's catalog verdict known after the first batch, the others went without a greenlet
    assert state["sent_at_once"] >= 1
    for c in conns:
        c.close()


def locked(direct, table, mode):
    """A connection of its own holding table locked in mode (until its rollback or close)."""
    locker = psycopg2.connect(direct.dsn)
    locker.cursor().execute(f"LOCK TABLE {table} IN {mode} MODE")
    return locker


def lock_waits(cur, table):
    """The INSERTs into table the server holds waiting for a lock, in order of their text."""
    cur.execute("SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query ILIKE %s ORDER BY query", (f"insert into {table}%",))
    return [q for q, in cur.fetchall()]


def unread(port):
    """How many of the connections accepted on port (IPv4) hold bytes their server has not read."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and int(fields[4].split(":")[1], 16) > 0:
                count += 1
    return count


def test_rows_that_arrive_together_while_a_batch_runs_go_as_one_batch(start_proxy, direct):
    """While a batch of its table runs, the rows that arrive in one turn of the proxy's loop go as
    one batch (one commit), not the first of them alone at once and the others after it: under
    load a batch's clients all send their next row as soon as it is answered. Here the proxy is
    stopped while eight clients send their rows (they arrive together) and a lock holds the batch
    of a ninth on the server."""
    direct.cursor().execute("DROP TABLE IF EXISTS bt_turn; CREATE TABLE bt_turn (client int)")
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 12},
                        batch={"enabled": True, "tables": ["bt_*"], "max_delay_ms": 20})
    conns = [connect(proxy) for _ in range(9)]
    for i, c in enumerate(conns):  # (settings, the text and the table's verdict known: the fast path's)
        c.cursor().execute("insert into bt_turn (client) values (%s)", (100 + i,))
    locker = locked(direct, "bt_turn", "SHARE")
    watch = direct.cursor()

    _, before = proxy.api("GET", "/batch")
    first = Background(conns[0].cursor(), "insert into bt_turn (client) values (0)", fetch=False)
    deadline = time.monotonic() + 30
    while len(lock_waits(watch, "bt_turn")) < 1:
        assert time.monotonic() < deadline, "the first batch never reached the lock"
        time.sleep(0.05)
    proxy.signal(signal.SIGSTOP)
    try:
        rest = [Background(c.cursor(), "insert into bt_turn (client) values (%s)", (i,), fetch=False)
                for i, c in enumerate(conns[1:], 1)]
        while unread(proxy.port) < len(rest):  # (their rows wait in the proxy's sockets)
            assert time.monotonic() < deadline, "the rows were not sent"
            time.sleep(0.05)
    finally:
        proxy.signal(signal.SIGCONT)
    while len(lock_waits(watch, "bt_turn")) < 2:
        assert time.monotonic() < deadline, "the rows that came together never reached the server"
        time.sleep(0.05)
    time.sleep(0.2)  # (a row sent alone would make a third batch meanwhile: max_delay_ms is 20)
    locker.rollback()
    for b in [first, *rest]:
        assert b.join(15) and b.got == ["INSERT 0 1"]
    _, after = proxy.api("GET", "/batch")
    assert after["rows"] - before["rows"] == 9
    assert after["batches"] - before["batches"] == 2, (before, after)
    watch.execute("SELECT count(*) FROM bt_turn WHERE client < 100")
    assert watch.fetchone()[0] == 9
    locker.close()
    for c in conns:
        c.close()


def test_a_failing_row_fails_only_its_own_client(batch_proxy, direct):
    conns = [connect(batch_proxy) for _ in range(11)]
    results = together(11, lambda i: conns[i].cursor().execute("insert into bt_keys (id) values (%s)",
                                                               (i if i < 10 else 4,)))
    failed = [i for i, r in results.items() if isinstance(r, Exception)]
    assert len(failed) == 1 and failed[0] in (4, 10)
    assert isinstance(results[failed[0]], psycopg2.errors.UniqueViolation)
    cur = direct.cursor()
    cur.execute("SELECT count(*) FROM bt_keys")
    assert cur.fetchone()[0] == 10
    assert batch_proxy.api("GET", "/batch")[1]["fallbacks"] >= 1  # (the batch refused, its rows run alone)
    for c in conns:  # (the sessions go on)
        c.cursor().execute("select 1")
        c.close()


def test_what_must_not_be_batched_is_not(batch_proxy, direct):
    conn = batch_proxy.connect()  # a transaction: its insert goes with it and rolls back with it
    conn.cursor().execute("insert into bt_events (client, payload) values (-3, 'rolled back')")
    conn.rollback()
    conn.close()
    cur = direct.cursor()
    cur.execute("SELECT count(*) FROM bt_events WHERE client = -3")
    assert cur.fetchone()[0] == 0

    skip = connect(batch_proxy).cursor()  # a BEFORE ROW trigger that skips rows: passed through
    skip.execute("insert into bt_skip (x) values (-1)")
    assert skip.statusmessage == "INSERT 0 0"
    skip.execute("insert into bt_skip (x) values (1)")
    assert skip.statusmessage == "INSERT 0 1"
    assert batch_proxy.api("GET", "/batch")[1]["passed_through"] >= 1

    a, b = connect(batch_proxy), connect(batch_proxy)  # other settings: other batches
    a.cursor().execute("set search_path = bt_a")
    b.cursor().execute("set search_path = bt_b")
    together(2, lambda i: (a, b)[i].cursor().execute("insert into bt_where (x) values (%s)", (i,)))
    cur.execute("SELECT (SELECT array_agg(x) FROM bt_a.bt_where), (SELECT array_agg(x) FROM bt_b.bt_where)")
    assert cur.fetchone() == ([0], [1])

    seq = connect(batch_proxy).cursor()  # a session that uses currval(): its inserts are not batched
    seq.execute("select 1 where false and currval('bt_events_id_seq') > 0")
    before = batch_proxy.api("GET", "/batch")[1]["rows"]
    seq.execute("insert into bt_events (client, payload) values (-4, 'x') returning id")
    new_id = seq.fetchone()[0]
    seq.execute("select currval('bt_events_id_seq')")
    assert seq.fetchone()[0] == new_id and batch_proxy.api("GET", "/batch")[1]["rows"] == before


def test_extended_protocol_inserts_are_coalesced_too(batch_proxy, direct):
    import psycopg
    conns = [psycopg.connect(batch_proxy.dsn(), autocommit=True) for _ in range(12)]
    before = batch_proxy.api("GET", "/batch")[1]["rows"]

    def insert(i):
        cur = conns[i].execute("insert into bt_events (client, payload) values (%s, %s) returning client, payload",
                               (100 + i, f"it's {i}"))
        mine = cur.fetchall()
        cur = conns[i].execute("insert into bt_events (client, payload) values (%s, %s)", (100 + i, None))
        return mine, cur.rowcount
    results = together(12, insert)
    assert all(results[i] == ([(100 + i, f"it's {i}")], 1) for i in range(12)), results
    dup = together(2, lambda i: conns[i].execute("insert into bt_keys (id) values (%s)", (4242,)))
    assert sorted(type(r).__name__ for r in dup.values()) == ["Cursor", "UniqueViolation"]
    cur = direct.cursor()
    cur.execute("SELECT count(*), count(payload) FROM bt_events WHERE client >= 100")
    assert cur.fetchone() == (24, 12)
    assert batch_proxy.api("GET", "/batch")[1]["rows"] - before >= 24
    for c in conns:
        c.close()


def test_batched_inserts_wait_for_their_batch_in_the_fast_path(batch_proxy, direct):
    """With the fast path on, a batched INSERT waits for its batch without its session's greenlet:
    a request handled in the client's read callback, answered from a callback once committed."""
    state = batch_proxy.api("GET", "/fast_path")[1]
    if not state["enabled"]:
        pytest.skip("the fast path is off in this run (HELIOS_TEST_FAST_PATH=0)")
    conns = [connect(batch_proxy) for _ in range(8)]
    for c in conns:
        c.cursor().execute("select 1")  # (settings known: a new session's first request is its greenlet's)
    hits = state["hits"]

    def insert(i):
        cur = conns[i].cursor()
        for k in range(5):
            cur.execute("insert into bt_events (client, payload) values (%s, %s)", (i, f"fast {k}"))
        return cur.statusmessage
    assert set(together(8, insert).values()) == {"INSERT 0 1"}
    cur = direct.cursor()
    cur.execute("SELECT count(*) FROM bt_events WHERE payload LIKE 'fast %'")
    assert cur.fetchone()[0] == 40
    assert batch_proxy.api("GET", "/fast_path")[1]["hits"] - hits >= 40
    for c in conns:
        c.close()


def test_extended_protocol_inserts_wait_for_their_batch_in_the_fast_path(batch_proxy, direct):
    """psycopg 3's unnamed batches (Parse, Bind, Describe, Execute, Sync) of a batched INSERT are
    placed in their batch from the client's read callback too, and each client gets its own
    ParseComplete, BindComplete, Describe's answer, row and tag."""
    import psycopg
    state = batch_proxy.api("GET", "/fast_path")[1]
    if not state["enabled"]:
        pytest.skip("the fast path is off in this run (HELIOS_TEST_FAST_PATH=0)")
    conns = [psycopg.connect(batch_proxy.dsn(), autocommit=True) for _ in range(8)]
    for c in conns:
        c.execute("select 1")  # (settings known: a new session's first request is its greenlet's)
    state = batch_proxy.api("GET", "/fast_path")[1]
    rows = batch_proxy.api("GET", "/batch")[1]["rows"]

    def insert(i):
        got = []
        for k in range(5):
            cur = conns[i].execute("insert into bt_events (client, payload) values (%s, %s) returning client, payload",
                                   (200 + i, f"ext {k}"))
            got.append((cur.fetchall(), cur.statusmessage))
        cur = conns[i].execute("insert into bt_events (client, payload) values (%s, %s)", (200 + i, None))
        got.append((cur.description, cur.statusmessage))
        return got
    results = together(8, insert)
    for i in range(8):
        assert results[i] == [([(200 + i, f"ext {k}")], "INSERT 0 1") for k in range(5)] + [(None, "INSERT 0 1")], \
            results[i]
    cur = direct.cursor()
    cur.execute("SELECT count(*), count(payload) FROM bt_events WHERE client >= 200")
    assert cur.fetchone() == (48, 40)
    after = batch_proxy.api("GET", "/fast_path")[1]
    assert batch_proxy.api("GET", "/batch")[1]["rows"] - rows == 48
    assert after["hits"] - state["hits"] >= 48
    decided = "a stage's decision"
    assert after["misses_by_reason"].get(decided, 0) == state["misses_by_reason"].get(decided, 0), after
    with conns[0].cursor() as c:  # (the unnamed statement is the client's, as after any Parse)
        c.execute("select %s::int + 1", (41,))
        assert c.fetchone() == (42,)
    for c in conns:
        c.close()


def test_what_follows_a_row_answered_in_the_fast_path_takes_its_own_way(batch_proxy, direct):
    """A batched row answered from a callback leaves the session as it found it, and what the
    client sends next is decided as usual: a transaction's INSERT rolls back with it, a setting
    moves its rows to another batch, and PAUSE holds the next INSERT until RESUME."""
    state = batch_proxy.api("GET", "/fast_path")[1]
    if not state["enabled"]:
        pytest.skip("the fast path is off in this run (HELIOS_TEST_FAST_PATH=0)")
    conn = connect(batch_proxy)
    cur = conn.cursor()
    cur.execute("select 1")  # (settings known: a new session's first request is its greenlet's)
    rows = batch_proxy.api("GET", "/batch")[1]["rows"]
    hits = batch_proxy.api("GET", "/fast_path")[1]["hits"]
    for k in range(3):
        cur.execute("insert into bt_events (client, payload) values (-20, %s)", (f"rest {k}",))
        assert cur.statusmessage == "INSERT 0 1"
    assert batch_proxy.api("GET", "/batch")[1]["rows"] - rows == 3
    assert batch_proxy.api("GET", "/fast_path")[1]["hits"] - hits >= 3

    cur.execute("begin")  # right after a row the callback answered: a transaction's own insert
    cur.execute("insert into bt_events (client, payload) values (-20, 'rolled back')")
    cur.execute("select count(*) from bt_events where payload = 'rolled back'")
    assert cur.fetchone() == (1,)  # (its transaction sees it: not waiting in a batch)
    cur.execute("rollback")
    cur.execute("insert into bt_events (client, payload) values (-20, 'after')")  # (batched again)
    cur.execute("set search_path = bt_a")  # a setting: its rows are another batcher's
    cur.execute("insert into bt_where (x) values (20)")
    cur.execute("reset search_path")
    with direct.cursor() as d:
        d.execute("select (select count(*) from bt_events where payload = 'rolled back'), "
                  "(select count(*) from bt_events where payload = 'after'), (select array_agg(x) from bt_a.bt_where)")
        assert d.fetchone() == (0, 1, [20])

    assert batch_proxy.api("POST", "/pause", {})[0] in (200, 202)  # the next request after a row waits
    try:
        waiting = Background(cur, "insert into bt_events (client, payload) values (-20, 'paused')", fetch=False)
        time.sleep(0.5)
        assert not waiting.got, waiting.got
    finally:
        assert batch_proxy.api("POST", "/resume", {})[0] == 200
    assert waiting.join(10) and waiting.got == ["INSERT 0 1"], waiting.got
    cur.execute("select 'mine'")
    assert cur.fetchone() == ("mine",)
    conn.close()


def test_pause_waits_for_a_batch_under_way_and_holds_new_rows(batch_proxy, direct):
    """A batch is a transaction of the proxy's for clients that wait: PAUSE returns once it
    committed (as for a session holding a server connection), and a row sent during PAUSE waits
    for RESUME."""
    direct.cursor().execute(  # (a statement trigger: the batch runs 1.5 s, and it is batchable)
        "DROP TABLE IF EXISTS bt_slow; CREATE TABLE bt_slow (x int); "
        "CREATE OR REPLACE FUNCTION bt_slowly() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END$$; "
        "CREATE TRIGGER bt_slowly AFTER INSERT ON bt_slow FOR EACH STATEMENT EXECUTE FUNCTION bt_slowly()")
    conn = connect(batch_proxy)
    cur = conn.cursor()
    cur.execute("select 1")
    rows = batch_proxy.api("GET", "/batch")[1]["rows"]
    running = Background(cur, "insert into bt_slow (x) values (1)", fetch=False)
    time.sleep(0.4)  # (under way: in its trigger's sleep)
    status, out = batch_proxy.api("POST", "/pause", {"timeout": 10})
    try:
        assert status == 200 and out["still_active"] == 0, out
        with direct.cursor() as d:  # PAUSE returned after the batch committed
            d.execute("select count(*) from bt_slow")
            assert d.fetchone() == (1,)
        assert running.join(5) and running.got == ["INSERT 0 1"], running.got
        assert batch_proxy.api("GET", "/batch")[1]["rows"] - rows == 1
        other = connect(batch_proxy)
        held = Background(other.cursor(), "insert into bt_events (client, payload) values (-21, 'held')", fetch=False)
        time.sleep(0.5)
        assert not held.got, held.got
    finally:
        assert batch_proxy.api("POST", "/resume", {})[0] == 200
    assert held.join(10) and held.got == ["INSERT 0 1"], held.got
    conn.close()
    other.close()


def test_a_request_sent_while_a_row_waits_is_answered_after_it(batch_proxy, direct):
    """A client that sends its next Query while its batched INSERT waits for its batch (a
    pipeline) gets the INSERT's answer first, then the Query's, each once."""
    from helios_proxy.protocol import codec
    from .wire import Wire
    direct.cursor().execute(  # (a statement trigger: the batch runs 0.8 s, and it is batchable)
        "DROP TABLE IF EXISTS bt_slow2; CREATE TABLE bt_slow2 (x int); "
        "CREATE OR REPLACE FUNCTION bt_slowly2() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN PERFORM pg_sleep(0.8); RETURN NULL; END$$; "
        "CREATE TRIGGER bt_slowly2 AFTER INSERT ON bt_slow2 FOR EACH STATEMENT EXECUTE FUNCTION bt_slowly2()")
    w = Wire(batch_proxy.port)
    w.startup(user="postgres", database="postgres")
    w.send(codec.query("select 1"))
    w.until_ready()
    for k in range(2):
        rows = batch_proxy.api("GET", "/batch")[1]["rows"]
        w.send(codec.query(f"insert into bt_slow2 (x) values ({k})"))
        time.sleep(0.2)  # (its row waits in the server's trigger)
        w.send(codec.query(f"select 'after {k}'"))
        first, second = w.until_ready(), w.until_ready()
        assert [t for t, _ in first] == [b"C", b"Z"] and bytes(first[0][1]) == b"INSERT 0 1\0", first
        assert [t for t, _ in second] == [b"T", b"D", b"C", b"Z"] and f"after {k}".encode() in bytes(second[1][1])
        assert batch_proxy.api("GET", "/batch")[1]["rows"] - rows == 1
    w.close()


def test_a_session_that_starts_using_lastval_stops_being_batched(batch_proxy, direct):
    """An INSERT text whose batch decision the fast path remembers is still asked whether its
    session may wait for a batch: after lastval() its inserts run on its own connection."""
    conn = connect(batch_proxy)
    cur = conn.cursor()
    before = batch_proxy.api("GET", "/batch")[1]["rows"]
    for i in range(3):  # (the text's decision remembered after the first)
        cur.execute("insert into bt_events (client, payload) values (%s, 'seq')", (-10 - i,))
    assert batch_proxy.api("GET", "/batch")[1]["rows"] - before == 3
    cur.execute("select 1 where false and lastval() > 0")
    cur.execute("insert into bt_events (client, payload) values (-20, 'seq') returning id")
    new_id = cur.fetchone()[0]
    cur.execute("select lastval()")
    assert cur.fetchone()[0] == new_id
    assert batch_proxy.api("GET", "/batch")[1]["rows"] - before == 3
    conn.close()


def test_a_client_gone_while_its_row_waits_costs_nothing_else(batch_proxy, direct):
    """A client that leaves while its batched INSERT waits (its batch blocked by a lock): its row,
    sent as an autocommit INSERT, is stored; the proxy and the other clients go on."""
    import os
    import socket
    import struct
    locker = psycopg2.connect(direct.dsn)
    locker.cursor().execute("LOCK TABLE bt_events IN EXCLUSIVE MODE")
    waiting = [connect(batch_proxy) for _ in range(3)]
    for c in waiting:
        c.cursor().execute("select 1")
    gone = batch_proxy.connect()  # (psycopg2 for its startup; its socket is then left mid-request)
    gone.autocommit = True
    gone.cursor().execute("select 1")
    text = b"insert into bt_events (client, payload) values (-30, 'gone')\0"
    sock = socket.socket(fileno=os.dup(gone.fileno()))
    sock.sendall(b"Q" + struct.pack("!I", len(text) + 4) + text)
    others = {}
    threads = [threading.Thread(target=lambda i=i: others.setdefault(i, waiting[i].cursor().execute(
        "insert into bt_events (client, payload) values (%s, 'after')", (-31 - i,)))) for i in range(3)]
    for t in threads:
        t.start()
    sock.shutdown(socket.SHUT_RDWR)  # (gone without a Terminate)
    sock.close()
    gone.close()
    locker.rollback()  # the batches go on
    for t in threads:
        t.join(30)
    assert len(others) == 3, f"answered: {sorted(others)}; still waiting: {[t.is_alive() for t in threads]}"
    cur = direct.cursor()
    cur.execute("SELECT client, payload FROM bt_events WHERE client <= -30 ORDER BY client")
    stored = cur.fetchall()
    assert len(stored) == 4, f"stored: {stored}; the proxy's log:\n{batch_proxy.output()[-3000:]}"
    check = connect(batch_proxy).cursor()
    check.execute("insert into bt_events (client, payload) values (-40, 'still') returning client")
    assert check.fetchone() == (-40,)
    locker.close()
    for c in waiting:
        c.close()


def test_a_batched_insert_is_read_back_by_its_client_from_a_standby(start_proxy, cluster, direct):
    """Read-your-writes holds for a batched INSERT: the client's next read, sent to a standby, waits
    until that standby replayed the batch that stored its row (or goes to the primary)."""
    from tests.test_routing import nodes, wait_standby_reads, writes_read_back
    direct.cursor().execute("DROP TABLE IF EXISTS bt_ryw; CREATE TABLE bt_ryw (id bigserial PRIMARY KEY, client int)")
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 8}, nodes=nodes(cluster),
                        batch={"enabled": True, "tables": ["bt_*"], "max_delay_ms": 5})
    wait_standby_reads(proxy)
    conns = [connect(proxy) for _ in range(6)]
    before = proxy.api("GET", "/batch")[1]["rows"]
    cur = conns[0].cursor()
    cur.execute("insert into bt_ryw (client) values (-1)")
    cur.execute("show helios.write_lsn")  # (the position its next reads wait for: past the batch's commit)
    token = cur.fetchone()[0]
    check = direct.cursor()
    check.execute("select %s::pg_lsn <= pg_current_wal_insert_lsn(), "
                  "pg_current_wal_insert_lsn() - %s::pg_lsn < 1000000", (token or "0/0", token or "0/0"))
    assert token and check.fetchone() == (True, True), token
    assert proxy.api("GET", "/batch")[1]["rows"] - before == 1

    results = together(6, lambda i: writes_read_back(conns[i].cursor(), "bt_ryw", "client", i, 60, cluster.ports[0]))
    state = proxy.api("GET", "/batch")[1]
    assert state["rows"] - before >= 301  # (the inserts were batched)
    assert state["sent_at_once"] >= 1  # (their WAL position asked by the Query sent with them)
    assert sum(r[0] for r in results.values()) == 0, results
    assert sum(r[1] for r in results.values()) > 0  # (reads did reach the standbys)
    for c in conns:
        c.close()


def test_batched_inserts_count_as_the_queries_and_transactions_they_are(batch_proxy, direct):
    """SHOW STATS (/stats) counts a batched INSERT as one query and one transaction of its client,
    whichever protocol sent it, as it counts the same INSERT run alone."""
    import psycopg

    def totals():
        row = {r["database"]: r for r in batch_proxy.api("GET", "/stats")[1]}["postgres"]
        return row["total_query_count"], row["total_xact_count"]
    conn = connect(batch_proxy)
    cur = conn.cursor()
    cur.execute("select 1")
    rows, (queries, transactions) = batch_proxy.api("GET", "/batch")[1]["rows"], totals()
    for i in range(5):
        cur.execute("insert into bt_events (client, payload) values (%s, 'counted')", (-50 - i,))
    with psycopg.connect(host="127.0.0.1", port=batch_proxy.port, user="postgres", dbname="postgres",
                         autocommit=True) as extended:  # (an unnamed Parse, Bind, Execute, Sync)
        for i in range(5):
            extended.execute("insert into bt_events (client, payload) values (%s, 'counted')", (-60 - i,))
        after = totals()
    assert batch_proxy.api("GET", "/batch")[1]["rows"] - rows == 10
    assert after[0] - queries >= 10 and after[1] - transactions >= 10, (queries, transactions, after)
    conn.close()


def test_a_batch_commit_invalidates_the_cache_of_what_its_table_reaches(start_proxy, direct):
    """The query cache forgets what a batched INSERT changed once its batch committed, as for any
    write: here a table an AFTER INSERT trigger updates, read (and stored) while the batch waited."""
    direct.cursor().execute(
        "DROP TABLE IF EXISTS bt_src, bt_audit; CREATE TABLE bt_src (x int); CREATE TABLE bt_audit (n int); "
        "INSERT INTO bt_audit VALUES (0); CREATE OR REPLACE FUNCTION bt_count() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN UPDATE bt_audit SET n = n + 1; RETURN NULL; END $$; "
        "CREATE TRIGGER bt_count AFTER INSERT ON bt_src FOR EACH ROW EXECUTE FUNCTION bt_count()")
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 8}, cache={"enabled": True},
                        batch={"enabled": True, "tables": ["bt_*"], "max_delay_ms": 5})
    reader = connect(proxy).cursor()

    def audit():
        reader.execute("select n from bt_audit")
        return reader.fetchone()[0]
    assert [audit() for _ in range(3)] == [0, 0, 0]  # (the catalog loaded, the answer stored)
    locker = psycopg2.connect(direct.dsn)
    locker.cursor().execute("LOCK TABLE bt_src IN EXCLUSIVE MODE")  # (the batch waits for it)
    before = proxy.api("GET", "/batch")[1]["rows"]
    inserting = connect(proxy).cursor()
    inserting.execute("select 1")  # (settings known: a new session's first request is never batched)
    writer = threading.Thread(target=lambda: inserting.execute("insert into bt_src (x) values (1)"))
    writer.start()
    time.sleep(0.5)
    assert [audit() for _ in range(5)] == [0] * 5  # (read while the batch waits: not committed yet)
    locker.rollback()
    writer.join(30)
    assert proxy.api("GET", "/batch")[1]["rows"] - before == 1
    assert audit() == 1
    locker.close()


def test_a_cancel_reaches_a_batched_insert_wherever_it_waits(start_proxy, direct):
    """Ctrl-C on a batched INSERT (its batches blocked by a lock here): a row still waiting for
    companions, a row alone in a batch the server runs, and a row in a batch with another client's
    all end at once with 57014 and are not stored; the other rows are, once the lock goes."""
    direct.cursor().execute("DROP TABLE IF EXISTS bt_cancel; CREATE TABLE bt_cancel (client int)")
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 8},
                        batch={"enabled": True, "tables": ["bt_*"], "max_delay_ms": 60000})
    conns = [connect(proxy) for _ in range(5)]
    for c in conns:
        c.cursor().execute("select 1")  # (settings known: a new session's first request is its greenlet's)
    locker = locked(direct, "bt_cancel", "EXCLUSIVE")
    watch = direct.cursor()

    def blocked():
        return lock_waits(watch, "bt_cancel")

    inserts = {}

    def until(what, timeout=30):  # (what it saw when it gives up: the waits, each insert's answer, the log)
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, (
                f"blocked: {blocked()}; answered: {({i: b.got for i, b in inserts.items()})}; "
                f"the proxy's log:\n{proxy.output()[-3000:]}")
            time.sleep(0.05)

    def insert(i):
        inserts[i] = Background(conns[i].cursor(), "insert into bt_cancel (client) values (%s)", (i,), fetch=False)

    def answered(i):
        assert inserts[i].join(15), f"client {i} still waits after its cancel"
        return inserts[i].got[0]

    insert(0)
    until(lambda: len(blocked()) == 1)
    insert(1)
    until(lambda: len(blocked()) == 2)  # (two batches run: the next rows wait for companions)
    insert(2)
    insert(3)
    insert(4)
    time.sleep(0.5)
    conns[2].cancel()  # waiting for companions
    assert isinstance(answered(2), psycopg2.errors.QueryCanceled)
    conns[0].cancel()  # alone in a batch the server runs
    assert isinstance(answered(0), psycopg2.errors.QueryCanceled)
    until(lambda: len(blocked()) == 2 and any("(3)" in q and "(4)" in q for q in blocked()))  # 3 and 4 together
    conns[3].cancel()  # in a batch with client 4's row
    assert isinstance(answered(3), psycopg2.errors.QueryCanceled)
    until(lambda: any("(4)" in q and "(3)" not in q for q in blocked()))  # 4 alone now
    locker.rollback()
    assert answered(1) == "INSERT 0 1" and answered(4) == "INSERT 0 1"
    watch.execute("SELECT client FROM bt_cancel ORDER BY client")
    assert watch.fetchall() == [(1,), (4,)]
    conns[0].cursor().execute("insert into bt_cancel (client) values (5)")  # (the canceled sessions go on)
    watch.execute("SELECT count(*) FROM bt_cancel")
    assert watch.fetchone() == (3,)
    locker.close()
    for c in conns:
        c.close()


def test_a_batch_whose_server_connection_is_lost_tells_its_clients_it_may_not_have_committed(batch_proxy, direct):
    """A batch sent from a loop callback (sent_at_once) whose server connection ends before its
    answer (the backend terminated here while a lock holds the batch): its client hears that the
    insert may or may not have been committed (08006), nothing else, and its session goes on."""
    client = connect(batch_proxy)
    client.cursor().execute("insert into bt_events (client, payload) values (1, 'first')")  # (the table's verdict)
    before = batch_proxy.get("/batch")
    locker = psycopg2.connect(direct.dsn)
    locker.cursor().execute("LOCK TABLE bt_events IN EXCLUSIVE MODE")
    insert = Background(client.cursor(), "insert into bt_events (client, payload) values (2, 'lost')", fetch=False)
    watch = direct.cursor()
    deadline, pids = time.monotonic() + 20, []
    while not pids:
        assert time.monotonic() < deadline, "the batch never reached the server"
        watch.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                      "AND query ILIKE 'insert into bt_events%lost%'")
        pids = [pid for pid, in watch.fetchall()]
        time.sleep(0.05)
    watch.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
    assert insert.join(15), "the client still waits for a batch whose connection is gone"
    error = insert.got[0]
    assert isinstance(error, psycopg2.Error) and error.pgcode == "08006", error
    assert "may or may not have been committed" in str(error)
    locker.rollback()
    locker.close()
    after = batch_proxy.get("/batch")
    assert after["sent_at_once"] > before["sent_at_once"] and after["errors"] == before["errors"] + 1
    cur = client.cursor()
    cur.execute("insert into bt_events (client, payload) values (3, 'after') returning client")
    assert cur.fetchone() == (3,)
    client.close()
