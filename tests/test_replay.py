"""Transaction replay across a failover ([replay], continuity/journal.py + replay.py) on a real primary +
sync standby1 + async standby2 (tests/fix_ha.py): kill -9 of the primary's postmaster in the middle
of transactions costs the clients nothing, loses nothing and duplicates nothing; what cannot be
replayed exactly gets 40001 (or the old connection error), never wrong data."""
import os
import signal
import subprocess
import threading
import time

import psycopg2
import pytest

from tests.fix_ha import query
from tests.test_ha import start_ha_proxy, wait_for

REPLAY = {"enabled": True}
# pgbench's TPC-B with a short sleep inside, so that at the kill most clients are inside a transaction
TPCB = ("\\set aid random(1, 100000)\n\\set bid random(1, 1)\n\\set tid random(1, 10)\n"
        "\\set delta random(-5000, 5000)\nBEGIN;\n"
        "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n"
        "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\nSELECT pg_sleep(0.02);\n"
        "UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;\n"
        "UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;\n"
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, "
        "CURRENT_TIMESTAMP);\nEND;\n")


def kill_primary(cluster):
    """kill -9 of the primary's postmaster (its backends notice and end on their own)."""
    with open(os.path.join(cluster.datadir(0), "postmaster.pid")) as f:
        os.kill(int(f.readline()), signal.SIGKILL)


def _try(fn):
    try:
        return fn()
    except subprocess.CalledProcessError:
        return False


def in_transaction(proxy, sql, params=None, **connect):
    """(connection, cursor) through the proxy, inside a transaction that ran sql (psycopg2)."""
    conn = proxy.connect(**connect)
    conn.autocommit = False
    cur = conn.cursor()
    cur.execute(sql, params)
    return conn, cur


def lost(proxy):
    """Until the proxy lost its connection, the dying backend may still answer a client's query."""
    wait_for(lambda: "server primary lost" in proxy.output(), 10, "the proxy to lose its server connection")


def new_primary(proxy):
    wait_for(lambda: proxy.api("GET", "/topology")[1]["primary"] not in (None, "primary"), 30, "a new primary")
    name = proxy.api("GET", "/topology")[1]["primary"]
    return name, {"standby1": 1, "standby2": 2}[name]


@pytest.mark.parametrize("mode,protocol,clients", [("transaction", "simple", 6), ("session", "prepared", 4)])
def test_pgbench_through_a_primary_kill_has_no_failed_client_and_loses_nothing(
        start_proxy, ha_cluster, tmp_path, mode, protocol, clients):
    subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(ha_cluster.ports[0]), "-U", "postgres", "-i", "-s",
                    "1", "-q", "postgres"], check=True, capture_output=True, timeout=120)
    script = tmp_path / "tpcb.sql"
    script.write_text(TPCB)
    proxy = start_ha_proxy(start_proxy, ha_cluster, mode=mode, replay=REPLAY)
    bench = subprocess.Popen(["pgbench", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "postgres", "-n",
                              "-c", str(clients), "-j", "2", "-T", "8", "--max-tries=3", "-M", protocol,
                              "-f", str(script), "postgres"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    time.sleep(3)
    kill_primary(ha_cluster)
    out, _ = bench.communicate(timeout=120)
    assert bench.returncode == 0 and "number of failed transactions: 0" in out, out[-1500:]
    processed = int(out.split("number of transactions actually processed: ")[1].split()[0])
    _, new = new_primary(proxy)
    stored = query(ha_cluster.ports[new], "SELECT count(*) FROM pgbench_history")[0][0]
    assert processed > 50 and stored == processed, (processed, stored)  # nothing lost, nothing twice
    status, stats = proxy.api("GET", "/replay")
    assert stats["replayed"] + stats["in_doubt_committed"] >= 1, stats  # the kill caught transactions
    assert "Traceback" not in proxy.output()


def test_a_session_keeps_its_settings_statements_and_cursor_position(start_proxy, ha_cluster):
    """Session pooling: a client holding a SET, a prepared statement and a cursor 3,000 rows into
    10,000 inside an open transaction goes on after the failover where it was."""
    import psycopg
    proxy = start_ha_proxy(start_proxy, ha_cluster, mode="session", replay=REPLAY)
    conn = psycopg.connect(proxy.dsn(), prepare_threshold=0)
    conn.execute("set application_name = 'migrated'")
    conn.execute("select %s::int + 1", (1,))  # a protocol-level prepared statement (psycopg's _pg3_0)
    conn.commit()
    cur = conn.cursor()
    cur.execute("declare c cursor for select g from generate_series(1, 10000) g")
    got = []
    for _ in range(30):
        got += [r[0] for r in cur.execute("fetch 100 from c").fetchall()]
    kill_primary(ha_cluster)
    _, new = new_primary(proxy)
    while True:
        rows = cur.execute("fetch 1000 from c").fetchall()
        if not rows:
            break
        got += [r[0] for r in rows]
    assert got == list(range(1, 10001))
    conn.commit()
    assert conn.execute("select current_setting('application_name'), inet_server_port()").fetchone() == \
        ("migrated", ha_cluster.ports[new])
    assert conn.execute("select %s::int + 1", (41,)).fetchone() == (42,)
    conn.close()


def test_a_transaction_whose_replay_answers_differently_gets_40001(start_proxy, ha_cluster):
    """now() on the new primary is not what the client saw: serialization failure, the client is
    in a failed transaction (as after any error), and the connection goes on there."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, replay=REPLAY)
    conn, cur = in_transaction(proxy, "select now()")
    kill_primary(ha_cluster)
    new_primary(proxy)  # (until its backend noticed, the dead postmaster's backend would still answer)
    with pytest.raises(psycopg2.errors.SerializationFailure):
        cur.execute("select 1")
    with pytest.raises(psycopg2.errors.InFailedSqlTransaction):  # (the 40001 came in its place)
        cur.execute("select 1")
    conn.rollback()
    cur.execute("select pg_is_in_recovery()")
    assert cur.fetchone() == (False,)
    conn.commit()
    assert proxy.api("GET", "/replay")[1]["aborted"] == 1


def test_a_failed_transaction_block_stays_failed_through_a_failover(start_proxy, ha_cluster):
    """A block that had failed can only roll back; a failover must not revive it. Here a request
    the proxy refused inside it failed the server's block (Forwarder.fail_block); the refusal is
    not in the journal, so the replay left the new primary's block going: the client's next
    statement ran, and its COMMIT stored the row it had inserted before the error."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, replay=REPLAY)
    conn, cur = in_transaction(proxy, "insert into ha_rows (id) values (-77)")
    with pytest.raises(psycopg2.errors.InvalidSqlStatementName):  # (26000: the proxy's own answer)
        cur.execute("EXECUTE nosuch")
    kill_primary(ha_cluster)
    _, port = new_primary(proxy)
    with pytest.raises(psycopg2.errors.InFailedSqlTransaction):  # (25P02, as before the failover)
        cur.execute("select 1")
    conn.commit()  # (a failed block's COMMIT rolls back)
    cur.execute("select count(*) from ha_rows where id = -77")
    assert cur.fetchone() == (0,)
    conn.commit()
    assert query(ha_cluster.ports[port], "select count(*) from ha_rows where id = -77") == [(0,)]
    assert proxy.api("GET", "/replay")[1]["replayed"] == 1


def test_a_transaction_over_the_journal_limit_gets_the_old_error(start_proxy, ha_cluster):
    proxy = start_ha_proxy(start_proxy, ha_cluster, replay={"enabled": True, "max_journal_bytes": 200})
    conn, cur = in_transaction(proxy, "select %s::text", ("x" * 500,))
    kill_primary(ha_cluster)
    lost(proxy)
    with pytest.raises(psycopg2.OperationalError):
        cur.execute("select 1")
    stats = proxy.api("GET", "/replay")[1]
    assert stats["over_limit"] == 1 and stats["not_replayable"] == 1 and stats["replayed"] == 0


def test_a_commit_in_doubt_is_looked_up_never_run_twice(start_proxy, ha_cluster):
    """A COMMIT waiting for the synchronous standby when the primary dies: whether it committed
    is asked of the new primary (txid_status); the client gets COMMIT, and the row is there once."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, replay=REPLAY)
    conn, cur = in_transaction(proxy, "insert into ha_rows (id) values (42)")
    receiver = query(ha_cluster.ports[1], "select pid from pg_stat_wal_receiver")[0][0]
    os.kill(receiver, signal.SIGSTOP)  # the COMMIT waits for standby1 (synchronous_standby_names)
    try:
        done = []
        t = threading.Thread(target=lambda: done.append(conn.commit()))
        t.start()
        time.sleep(1)
        assert t.is_alive()  # in flight
        kill_primary(ha_cluster)
        lost(proxy)  # (until then the dead postmaster's backend could still hear standby1's ack)
    finally:
        os.kill(receiver, signal.SIGCONT)  # whether the commit record reaches standby1 now is chance
    name, new = new_primary(proxy)
    t.join(60)
    assert done == [None]  # the client's COMMIT succeeded
    assert query(ha_cluster.ports[new], "select count(*) from ha_rows where id = 42") == [(1,)]
    stats = proxy.api("GET", "/replay")[1]
    assert stats["in_doubt_committed"] + stats["in_doubt_replayed"] == 1, stats


def test_a_backend_ended_on_a_live_primary_is_not_replayed(start_proxy, ha_cluster):
    """pg_terminate_backend is not a failover: the client gets the server's error, as without replay."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, mode="session", replay=REPLAY)
    conn = proxy.connect()
    cur = conn.cursor()
    cur.execute("select pg_backend_pid()")
    pid = cur.fetchone()[0]
    query(ha_cluster.ports[0], f"select pg_terminate_backend({pid})")
    lost(proxy)
    with pytest.raises(psycopg2.OperationalError):
        cur.execute("select 1")
    assert proxy.api("GET", "/replay")[1]["replayed"] == 0


def test_a_session_with_a_temporary_table_is_not_moved(start_proxy, ha_cluster):
    """Session pooling: state that cannot be re-created elsewhere (here a temporary table) makes
    the session not replayable: the clean connection error, as without replay."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, mode="session", replay=REPLAY)
    conn = proxy.connect()
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("create temporary table mine (x int)")
    cur.execute("select 1")  # (its state is read back before this one)
    conn.autocommit = False
    cur.execute("insert into mine values (1)")
    kill_primary(ha_cluster)
    lost(proxy)
    with pytest.raises(psycopg2.OperationalError):
        cur.execute("select 1")
    assert proxy.api("GET", "/replay")[1]["not_replayable"] == 1


def test_a_replay_never_writes_to_the_old_primary_when_it_comes_back(start_proxy, ha_cluster):
    """Split brain: the killed primary restarts as a primary after the failover; the replayed
    transaction (and every later one) commits on the new primary only."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, replay=REPLAY)
    conn, cur = in_transaction(proxy, "insert into ha_rows (id) values (7)")
    kill_primary(ha_cluster)
    name, new = new_primary(proxy)
    def restart():  # (once the dead postmaster's last children let go of its shared memory)
        ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(0), "-l", ha_cluster.datadir(0) + ".log", "-w",
                        "start", "-o", f"-p {ha_cluster.ports[0]} -k {ha_cluster.base}")
        return True
    wait_for(lambda: _try(restart), 30, "the old primary to start again")
    wait_for(lambda: not query(ha_cluster.ports[0], "select pg_is_in_recovery()")[0][0], 30, "the old primary up")
    time.sleep(1)  # its health probes see it again
    cur.execute("insert into ha_rows (id) values (8)")
    conn.commit()
    assert query(ha_cluster.ports[new], "select id from ha_rows where id in (7, 8) order by id") == [(7,), (8,)]
    assert query(ha_cluster.ports[0], "select count(*) from ha_rows where id in (7, 8)") == [(0,)]
    assert proxy.api("GET", "/topology")[1]["primary"] == name


def test_a_read_on_a_standby_that_dies_goes_on_on_the_primary(start_proxy, ha_cluster):
    """A read in flight on a standby whose node goes down is run again on the primary."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, replay=REPLAY)
    conn = proxy.connect()
    conn.autocommit = True
    cur = conn.cursor()
    result = []

    def read():
        try:
            cur.execute("/*+ node=standby2 */ select pg_sleep(1.5), 42")
            result.append(cur.fetchall())
        except psycopg2.Error as e:
            result.append(e)
    t = threading.Thread(target=read)
    t.start()
    time.sleep(0.5)
    ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(2), "-m", "immediate", "stop")
    t.join(30)
    assert result == [[("", 42)]], (result, proxy.output())
    assert proxy.api("GET", "/replay")[1]["replayed"] == 1
    assert "server standby2 lost" in proxy.output()


def test_autocommit_writes_through_a_primary_kill(start_proxy, ha_cluster):
    """Lone INSERTs outside a transaction block are wrapped in a transaction of the proxy's (xid
    known before they commit): through a kill -9 no acknowledged row is lost, none is stored twice,
    and a writer sees at most 08007 (outcome unknown: it died before its answer came)."""
    from tests.test_ha import Load
    proxy = start_ha_proxy(start_proxy, ha_cluster, replay=REPLAY)
    with Load(proxy) as load:
        time.sleep(2)
        kill_primary(ha_cluster)
        load.kill_at = time.time()
        wait_for(lambda: load.first_ok_after is not None, 30, "a write after the primary died")
        time.sleep(0.5)
    _, new = new_primary(proxy)
    stored = [r[0] for r in query(ha_cluster.ports[new], "SELECT id FROM ha_rows")]
    assert len(stored) == len(set(stored))
    lost_rows = set(load.acked) - set(stored)
    assert len(load.acked) > 100 and not lost_rows, sorted(lost_rows)[:5]
    assert all(code == "08007" for _, code, _ in load.errors), load.errors
    stats = proxy.api("GET", "/replay")[1]
    print(f"writer errors {len(load.errors)}, replay {stats}")


def test_a_tls_client_goes_on_too(start_proxy, ha_cluster, tls_files):
    """With TLS on the client's side the server's answers move through a greenlet pump: replayed
    all the same, its stream going on where it stopped."""
    proxy = start_ha_proxy(start_proxy, ha_cluster, mode="session", replay=REPLAY,
                           tls={"client_mode": "require", "client_cert_file": tls_files["cert"],
                                "client_key_file": tls_files["key"]})
    conn, cur = in_transaction(proxy, "declare c cursor for select g from generate_series(1, 1000) g",
                               sslmode="require")
    cur.execute("fetch 400 from c")
    got = [r[0] for r in cur.fetchall()]
    kill_primary(ha_cluster)
    new_primary(proxy)
    cur.execute("fetch all from c")
    got += [r[0] for r in cur.fetchall()]
    assert got == list(range(1, 1001)) and conn.info.ssl_in_use
    conn.commit()
    assert proxy.api("GET", "/replay")[1]["replayed"] == 1


@pytest.mark.parametrize("prepare_threshold", [None, 0])
def test_autocommit_writes_in_the_extended_protocol_through_a_primary_kill(start_proxy, ha_cluster,
                                                                          prepare_threshold):
    """psycopg 3 sends its INSERTs as extended batches (unnamed, or prepared: named): wrapped up to
    their Sync all the same."""
    import psycopg
    proxy = start_ha_proxy(start_proxy, ha_cluster, mode="session", replay=REPLAY)
    acked, errors, stop = [], [], threading.Event()

    def writer(w):
        conn, i = None, w * 10_000_000
        while not stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(proxy.dsn(), autocommit=True, prepare_threshold=prepare_threshold)
                conn.execute("INSERT INTO ha_rows (id) VALUES (%s)", (i,))
                acked.append(i)
            except psycopg.Error as e:
                errors.append(e.sqlstate)
                conn = None
                time.sleep(0.05)
            i += 1
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        kill_primary(ha_cluster)
        _, new = new_primary(proxy)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    stored = {r[0] for r in query(ha_cluster.ports[new], "SELECT id FROM ha_rows")}
    assert len(acked) > 100 and not set(acked) - stored
    assert all(code == "08007" for code in errors), errors
    stats = proxy.api("GET", "/replay")[1]
    print(f"writer errors {errors}, replay {stats}")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_restart_of_a_single_primary_is_waited_for_and_the_transaction_goes_on(start_proxy, ha_cluster, mode):
    """No standby to fail over to: a transaction cut by a restart of its primary is replayed there
    once it is back (within failover.buffer_timeout), not given up at once."""
    from tests.fix_ha import ha_nodes
    proxy = start_proxy(pool={"mode": mode, "max_size": 4}, nodes=ha_nodes(ha_cluster)[:1], replay=REPLAY,
                        health={"interval": 0.3, "timeout": 2.0}, failover={"buffer_timeout": 30.0})
    conn, cur = in_transaction(proxy, "insert into ha_rows (id) values (%s)", (7001,))
    d = ha_cluster.datadir(0)
    kill_primary(ha_cluster)
    lost(proxy) if mode == "session" else None

    def start_again():
        time.sleep(1.5)  # (down for a while: the replay waits)
        wait_for(lambda: _try(lambda: ha_cluster._run("pg_ctl", "-D", d, "-l", d + ".log", "-w", "-t", "60", "-o",
                                                       f"-p {ha_cluster.ports[0]} -k {ha_cluster.base}", "start")),
                 30, "the primary to start again")
    restarter = threading.Thread(target=start_again)
    restarter.start()
    try:
        cur.execute("insert into ha_rows (id) values (%s)", (7002,))
        conn.commit()
    finally:
        restarter.join()
    assert query(ha_cluster.ports[0], "select array_agg(id order by id) from ha_rows where id > 7000") == \
        [([7001, 7002],)]
    conn.close()
    assert "Traceback" not in proxy.output()
