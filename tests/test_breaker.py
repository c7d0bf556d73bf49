"""Circuit breakers ([circuit_breaker], topology/breaker.py) on the real cluster: a standby that refuses the
application (pg_hba.conf) while it answers the health probes opens its breaker, clients see no
error, and it gets reads again once it recovers; an open primary breaker fails transactions at once (57P03)."""
import contextlib
import os
import time

import psycopg2
import pytest

from tests.test_routing import nodes, wait_standby_reads

FAST_HEALTH = {"interval": 0.3, "timeout": 2.0}


def read_port(proxy):
    conn = psycopg2.connect(host="127.0.0.1", port=proxy.port, user="app", dbname="postgres", connect_timeout=10)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("select inet_server_port()")
        return cur.fetchone()[0]
    finally:
        conn.close()


@contextlib.contextmanager
def app_refused(cluster, index):
    """Node index's pg_hba.conf refuses user app (its probes still pass) while inside."""
    hba = os.path.join(cluster.datadir(index), "pg_hba.conf")
    with open(hba) as f:
        original = f.read()
    try:
        with open(hba, "w") as f:
            f.write("host all app 127.0.0.1/32 reject\n" + original)
        cluster.sql("SELECT pg_reload_conf()", port=cluster.ports[index])
        yield
    finally:
        with open(hba, "w") as f:
            f.write(original)
        cluster.sql("SELECT pg_reload_conf()", port=cluster.ports[index])


def breaker_of(proxy, name):
    return next(n for n in proxy.api("GET", "/nodes")[1] if n["name"] == name)["breaker"]


def test_a_standby_refusing_the_application_opens_its_breaker_then_recovers(cluster, start_proxy):
    proxy = start_proxy(pool={"mode": "transaction"}, nodes=nodes(cluster), health=FAST_HEALTH,
                        circuit_breaker={"enabled": True, "min_requests": 1, "window_s": 30.0, "open_s": 0.5,
                                 "max_open_s": 2.0, "half_open_requests": 2})
    wait_standby_reads(proxy)
    with app_refused(cluster, 1):
        deadline = time.monotonic() + 20
        while breaker_of(proxy, "standby1")["trips"] < 2:  # (it is tried again, and trips again)
            assert read_port(proxy) in cluster.ports  # every client read answered, by some node
            assert time.monotonic() < deadline, breaker_of(proxy, "standby1")
        state = breaker_of(proxy, "standby1")
        assert state["open_s"] >= 1.0 and "pg_hba.conf" in (state["reason"] or "")  # (adaptive: doubled)
        assert breaker_of(proxy, "standby2")["state"] == "closed"
    deadline = time.monotonic() + 30
    while True:  # reads try it again (half open) and, all answered, close it
        port = read_port(proxy)
        if port == cluster.ports[1] and breaker_of(proxy, "standby1")["state"] == "closed":
            break
        assert time.monotonic() < deadline, breaker_of(proxy, "standby1")
        time.sleep(0.05)


def test_an_open_primary_breaker_fails_transactions_at_once_with_57P03_until_it_recovers(cluster, start_proxy):
    proxy = start_proxy(pool={"mode": "transaction", "min_size": 0}, health=FAST_HEALTH,
                        circuit_breaker={"enabled": True, "min_requests": 2, "window_s": 30.0, "open_s": 1.0,
                                         "half_open_requests": 1})
    waiting = psycopg2.connect(host="127.0.0.1", port=proxy.port, user="app", dbname="postgres")
    waiting.autocommit = True
    holder = psycopg2.connect(host="127.0.0.1", port=proxy.port, user="app", dbname="postgres")
    holder.cursor().execute("select 1")  # in a transaction: the pool's server connection stays with it
    with app_refused(cluster, 0):
        refusals = []
        for _ in range(3):
            with pytest.raises(psycopg2.OperationalError) as refused:
                read_port(proxy)
            refusals.append(str(refused.value))
        # PostgreSQL's refusal twice, then the breaker's answer without asking the primary again
        assert "pg_hba.conf rejects connection" in refusals[0] and "pg_hba.conf rejects connection" in refusals[1]
        assert "circuit breaker of node primary is open" in refusals[2], refusals
        with pytest.raises(psycopg2.OperationalError) as refused:  # a logged-in client: an error, not the end
            waiting.cursor().execute("select 1")
        assert refused.value.pgcode == "57P03" and breaker_of(proxy, "primary")["state"] == "open"
    holder.close()
    time.sleep(1.1)  # half open: the next transaction goes, succeeds and closes it
    cur = waiting.cursor()
    cur.execute("select inet_server_port()")
    assert cur.fetchone()[0] == cluster.ports[0] and breaker_of(proxy, "primary")["state"] == "closed"
    waiting.close()


def test_an_open_primary_breaker_fails_a_client_at_rest_too(cluster, start_proxy):
    """A client whose last transaction ended at once (at rest: its server connection idle on top of
    its pool, LeaseSlot.take_again) gets 57P03 like every other while the primary's breaker is open:
    its next transaction does not go on the connection it used last."""
    proxy = start_proxy(pool={"mode": "transaction", "min_size": 0}, health=FAST_HEALTH,
                        circuit_breaker={"enabled": True, "min_requests": 2, "window_s": 30.0, "open_s": 30.0,
                                         "half_open_requests": 1})
    rest = psycopg2.connect(host="127.0.0.1", port=proxy.port, user="postgres", dbname="postgres")
    rest.autocommit = True
    cur = rest.cursor()
    for _ in range(3):  # (its own pool: user app's logins below never take its connection)
        cur.execute("select 1")
    with app_refused(cluster, 0):
        for _ in range(2):
            with pytest.raises(psycopg2.OperationalError):
                read_port(proxy)
        assert breaker_of(proxy, "primary")["state"] == "open"
        with pytest.raises(psycopg2.OperationalError) as refused:
            cur.execute("select 1")
        assert refused.value.pgcode == "57P03"
    rest.close()


BREAKERS = {"enabled": True, "window_s": 10.0, "min_requests": 5, "failure_rate": 0.5, "open_s": 3.0}


def app_conn(proxy):
    conn = psycopg2.connect(host="127.0.0.1", port=proxy.port, user="app", dbname="postgres", connect_timeout=10)
    conn.autocommit = True
    return conn


@pytest.mark.parametrize("code", ["XX000", "58000", "53300", "57P03", "53100"])
def test_errors_a_clients_own_statement_raises_never_open_a_breaker_nor_end_its_session(cluster, start_proxy, code):
    proxy = start_proxy(pool={"mode": "transaction"}, circuit_breaker=BREAKERS)
    raise_it = f"do $$ begin raise exception 'mine' using errcode = '{code}'; end $$"
    for _ in range(15):  # each on a new connection, as the attack did
        conn = app_conn(proxy)
        cur = conn.cursor()
        with pytest.raises(psycopg2.Error) as e:
            cur.execute(raise_it)
        assert e.value.pgcode == code  # the client gets its error...
        cur.execute("select 1")  # ...and its session goes on
        assert cur.fetchone() == (1,)
        conn.close()
    assert breaker_of(proxy, "primary") == {**breaker_of(proxy, "primary"), "state": "closed", "trips": 0}
    conn = app_conn(proxy)
    conn.cursor().execute("create temp table if not exists bk_w (x int)")  # writes still go through
    conn.close()


def test_a_standby_refusing_logins_after_its_sessions_ended_trips_its_breaker(cluster, start_proxy):
    proxy = start_proxy(pool={"mode": "transaction"}, nodes=nodes(cluster), health=FAST_HEALTH,
                        circuit_breaker=BREAKERS)
    wait_standby_reads(proxy)
    for _ in range(20):
        read_port(proxy)  # (pooled connections on both standbys)
    for _ in range(150):  # another user's leases succeed on standby2 meanwhile: a node fine for some
        proxy.query("select inet_server_port()")
    with app_refused(cluster, 2):
        time.sleep(0.3)
        cluster.sql("select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = 'app'",
                    port=cluster.ports[2])  # as a restart with the new pg_hba.conf would
        served = [read_port(proxy) for _ in range(60)]  # every read answered (no exception)
        assert breaker_of(proxy, "standby2")["state"] in ("open", "half_open"), breaker_of(proxy, "standby2")
        assert breaker_of(proxy, "standby2")["trips"] >= 1
        assert served[-10:].count(cluster.ports[2]) == 0
