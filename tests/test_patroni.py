"""Proxies following a real Patroni cluster through its DCS (tests/fix_patroni.py: PyPI's Patroni,
two PostgreSQL nodes, etcd): a `patronictl switchover` under writes through two proxies costs no
client an error and loses nothing, every proxy names the new leader as soon as etcd has it, and a
kill -9 of the leader's Patroni and PostgreSQL loses no acknowledged write, writes resuming within
moments of the new leader key."""
import threading
import time

from helios_proxy.topology.etcd import Etcd
from tests.fix_ha import query
from tests.fix_patroni import SCOPE, patroni  # noqa: F401 - a fixture
from tests.test_ha import Load, wait_for

HEALTH = {"interval": 0.5, "timeout": 1.0, "failure_threshold": 2, "success_threshold": 1}


def proxies_for(start_proxy, patroni, count=2):  # noqa: F811
    return [start_proxy(pool={"mode": "transaction", "max_size": 10}, nodes=patroni.nodes(), health=HEALTH,
                        failover={"mode": "external", "buffer_timeout": 60},
                        topology={"provider": "patroni", "dcs_url": patroni.etcd.url, "scope": SCOPE})
            for _ in range(count)]


class LeaderWatch:
    """When etcd's copy of Patroni's leader key took each value (a watch of its own)."""

    def __init__(self, patroni):  # noqa: F811
        self.etcd, self.at, self.stop = Etcd(patroni.etcd.url), {}, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        key = f"/service/{SCOPE}/leader"
        _, revision = self.etcd.range(key)
        for change in self.etcd.watch(key, revision + 1):
            if self.stop:
                return
            if change is not None and change[0] == "PUT":
                self.at.setdefault(change[2], time.monotonic())


def named(proxy, leader):
    return proxy.api("GET", "/topology")[1]["primary"] == leader


def test_a_switchover_under_writes_through_two_proxies_costs_no_client_an_error(start_proxy, patroni):  # noqa: F811
    primary = patroni.pg[int(patroni.leader()[1:])]
    query(primary, "create table if not exists ha_rows (id bigint primary key, at timestamptz default now()); select 1")
    proxies = proxies_for(start_proxy, patroni)
    old, new = patroni.leader(), patroni.sync_standby()
    watch = LeaderWatch(patroni)
    loads = [Load(p, writers=2, base=k * 100_000_000) for k, p in enumerate(proxies)]
    for load in loads:
        load.__enter__()
    try:
        time.sleep(1.5)
        seen = {}

        def poll():  # (patronictl returns once the switchover is done: the proxies are watched meanwhile)
            deadline = time.monotonic() + 60
            while len(seen) < len(proxies) and time.monotonic() < deadline:
                for k, p in enumerate(proxies):
                    if k not in seen and named(p, new):
                        seen[k] = time.monotonic()
                time.sleep(0.01)
        poller = threading.Thread(target=poll)
        poller.start()
        out = patroni.patronictl("switchover", "--leader", old, "--candidate", new, "--force")
        assert out.returncode == 0, out.stdout + out.stderr
        poller.join()
        wait_for(lambda: all(p.api("GET", "/topology")[1]["state"] == "CONFIRMED" for p in proxies), 30,
                 "the new leader confirmed")
        time.sleep(1.5)  # (writes on the new leader)
    finally:
        for load in loads:
            load.__exit__(None, None, None)
        watch.stop = True
    assert patroni.leader() == new and len(seen) == len(proxies), (patroni.leader(), seen)
    lag = [round(seen[k] - watch.at[new], 3) for k in seen]
    print(f"the proxies named {new} {lag} s after etcd had it")
    assert max(lag) < 0.5, lag
    errors = [e for load in loads for e in load.errors]
    assert not errors, errors[:5]
    stored = {r[0] for r in query(patroni.pg[int(new[1:])], "select id from ha_rows")}
    acked = [i for load in loads for i in load.acked]
    assert len(acked) > 50 and not [i for i in acked if i not in stored]  # (once each: ids are the primary key)


def test_kill_9_of_the_leader_loses_no_acknowledged_write(start_proxy, patroni):  # noqa: F811
    patroni.wait(lambda: patroni.sync_standby() is not None and patroni.leader() is not None, 120,
                 "a leader and a synchronous standby")
    leader, standby = patroni.leader(), patroni.sync_standby()
    query(patroni.pg[int(leader[1:])], "create table if not exists ha_rows (id bigint primary key, "
                                       "at timestamptz default now()); select 1")
    proxy = proxies_for(start_proxy, patroni, count=1)[0]
    watch = LeaderWatch(patroni)
    with Load(proxy, writers=3, base=500_000_000) as load:
        time.sleep(1.5)
        patroni.kill(int(leader[1:]))
        killed_at = time.monotonic()  # (its backends may still commit a moment: orphans of a killed postmaster)
        wait_for(lambda: standby in watch.at, 60, "Patroni electing a new leader")
        wait_for(lambda: load.acked_at[-1] > watch.at[standby], 30, "a write after the new leader")
        time.sleep(1)
    watch.stop = True
    after_key = next(t for t in load.acked_at if t > watch.at[standby]) - watch.at[standby]
    print(f"new leader key {watch.at[standby] - killed_at:.2f} s after the kill; writes resumed "
          f"{after_key:.2f} s after it")
    assert after_key < 2.0
    stored = {r[0] for r in query(patroni.pg[int(standby[1:])], "select id from ha_rows")}
    lost = [i for i in load.acked if i not in stored]
    assert len(load.acked) > 50 and not lost, (len(load.acked), lost[:5])
    for _, code, message in load.errors:  # what a client saw says what happened
        assert code in ("08006", "08007", "57P03", "57P01") or "server closed the connection" in message, \
            (code, message)
