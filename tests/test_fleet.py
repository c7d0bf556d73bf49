"""A fleet of proxies coordinated through etcd ([fleet] dcs_url, topology/fleet_dcs.py), on a real
primary + two standbys (tests/fix_ha.py) and a real etcd (tests/fix_etcd.py): one failover decision
for all members, a member alone cut off from the primary promotes nothing, no member promotes
without etcd, a switchover at one member moves them all, cancels reach their query from any member."""
import json
import socket
import struct
import threading
import time

import psycopg2
import pytest

from tests.background import Background
from tests.fix_etcd import etcd  # noqa: F401 - a fixture
from tests.fix_ha import ha_nodes, query
from tests.test_ha import FAST_HEALTH, Load, in_recovery, wait_for


class Relay:
    """A TCP relay to a port that a test can cut (connections dropped, new ones refused), make hang
    (bytes swallowed, connections held: a network that holds what it cannot deliver) and mend: one
    proxy's network path to the primary."""

    def __init__(self, target):
        self.target, self.open, self.socks, self.hanging = target, True, [], False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open or self.hanging:
                if self.hanging:
                    self.socks.append(client)  # (held, never answered)
                else:
                    client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target), 2)
            except OSError:
                client.close()
                continue
            self.socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def pipe(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    if self.hanging:
                        return  # (the far end is gone; the other end hears nothing of it)
                    break
                if not self.hanging:
                    b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hang(self):
        self.hanging = True

    def cut(self):
        self.open = False
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.socks = []

    def close(self):
        self.cut()
        self.listener.close()


def fleet_proxies(start_proxy, cluster, etcd, count=3, nodes=None, failover=None, **sections):  # noqa: F811
    return [start_proxy(pool={"mode": "transaction", "max_size": 10}, health=FAST_HEALTH,
                        nodes=(nodes or {}).get(k) or ha_nodes(cluster), failover={"mode": "promote", **(failover or {})},
                        fleet={"name": f"p{k}", "dcs_url": etcd.url, "ttl": 3}, **sections)
            for k in range(count)]


def wait_members(proxies, count):
    wait_for(lambda: all(len(p.api("GET", "/fleet")[1]["members"]) == count for p in proxies), 20,
             f"{count} members registered")


WRITES = iter(range(-1000, -100000, -1))


def writes_to(proxy):
    """The port of the server a write through proxy lands on."""
    return proxy.query(f"insert into ha_rows (id) values ({next(WRITES)}) returning inet_server_port()")[0][0]


def test_a_member_that_alone_loses_the_primary_promotes_nothing(start_proxy, ha_cluster, etcd):  # noqa: F811
    relay = Relay(ha_cluster.ports[0])
    try:
        through_relay = [dict(n, port=relay.port) if n["role"] == "primary" else n for n in ha_nodes(ha_cluster)]
        proxies = fleet_proxies(start_proxy, ha_cluster, etcd, nodes={2: through_relay})
        wait_members(proxies, 3)
        relay.cut()  # the third proxy alone loses its path to the primary
        wait_for(lambda: "only 1 of 3 live members see primary down" in (proxies[2].api("GET", "/fleet")[1]
                                                                           ["refusal"] or ""), 20,
                 "the cut-off member's failover refused")
        time.sleep(2)  # (it keeps trying meanwhile)
        assert in_recovery(ha_cluster.ports[1]) and in_recovery(ha_cluster.ports[2])
        assert writes_to(proxies[0]) == writes_to(proxies[1]) == ha_cluster.ports[0]
        fleet = proxies[0].api("GET", "/fleet")[1]
        assert fleet["decision"] is None and fleet["lock"] in (None, "p2")  # (it keeps asking, in vain)
        relay.open = True  # the path is back: it takes the primary back, nothing was promoted
        wait_for(lambda: proxies[2].api("GET", "/topology")[1]["state"] == "CONFIRMED", 20, "the primary back")
        assert writes_to(proxies[2]) == ha_cluster.ports[0]  # (through the relay)
    finally:
        relay.close()


def test_when_the_primary_dies_exactly_one_member_promotes_and_every_member_follows(
        start_proxy, ha_cluster, etcd):  # noqa: F811
    """Three members race for the lock; one promotes, all follow. The third reaches the primary
    through a network that holds its connections when the primary dies (nothing ever answers
    them): the decision cuts them, and its writes in flight go on on the new primary."""
    relay = Relay(ha_cluster.ports[0])
    through_relay = [dict(n, port=relay.port) if n["role"] == "primary" else n for n in ha_nodes(ha_cluster)]
    proxies = fleet_proxies(start_proxy, ha_cluster, etcd, nodes={2: through_relay})
    wait_members(proxies, 3)
    loads = [Load(p, writers=2, base=k * 100_000_000) for k, p in enumerate(proxies)]
    for load in loads:
        load.__enter__()
    try:
        time.sleep(1.5)
        relay.hang()
        ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(0), "-m", "immediate", "stop")
        wait_for(lambda: all(p.api("GET", "/topology")[1]["state"] == "CONFIRMED"
                             and p.api("GET", "/topology")[1]["primary"] != "primary" for p in proxies), 30,
                 "every member on a new primary")
        time.sleep(1)
        stuck = proxies[2].api("GET", "/sessions")[1]
    finally:
        for load in loads:
            load.__exit__(None, None, None)
        relay.close()
    assert not [t for load in loads for t in load.threads if t.is_alive()], stuck  # (no client left hanging)
    promoted = [i for i in (1, 2) if not in_recovery(ha_cluster.ports[i])]
    assert len(promoted) == 1, promoted  # (members racing for the lock never both promote)
    new = ha_cluster.ports[promoted[0]]
    assert {writes_to(p) for p in proxies} == {new}
    decisions = [p.api("GET", "/fleet")[1]["decision"] for p in proxies]
    assert all(d == decisions[0] for d in decisions) and decisions[0]["epoch"] == 1
    assert decisions[0]["primary"] == f"standby{promoted[0]}" and decisions[0]["old"] == "primary"
    assert sum(p.api("GET", "/topology")[1]["failovers"] for p in proxies) == 1  # one promoter
    assert sum("decides" in p.output() for p in proxies) == 1
    present = {r[0] for r in query(new, "select id from ha_rows")}
    acked = [i for load in loads for i in load.acked]
    lost = [i for i in acked if i not in present]
    assert len(acked) > 50 and not lost, (len(acked), lost[:5])
    for p in proxies:  # the old primary is fenced on every member
        nodes = {n["name"]: n for n in p.api("GET", "/nodes")[1]}
        assert nodes["primary"]["fenced"], nodes["primary"]


def test_without_etcd_no_member_promotes(start_proxy, ha_cluster, etcd):  # noqa: F811
    proxies = fleet_proxies(start_proxy, ha_cluster, etcd, count=2)
    wait_members(proxies, 2)
    etcd.stop()
    ha_cluster._run("pg_ctl", "-D", ha_cluster.datadir(0), "-m", "immediate", "stop")
    wait_for(lambda: all("etcd unreachable" in (p.api("GET", "/fleet")[1]["refusal"] or "") for p in proxies), 20,
             "both members refusing to decide")
    time.sleep(2)
    assert in_recovery(ha_cluster.ports[1]) and in_recovery(ha_cluster.ports[2])
    for p in proxies:
        assert p.api("GET", "/topology")[1]["failovers"] == 0


def test_a_switchover_at_one_member_moves_the_whole_fleet(start_proxy, ha_cluster, etcd):  # noqa: F811
    proxies = fleet_proxies(start_proxy, ha_cluster, etcd, count=2)
    wait_members(proxies, 2)
    with Load(proxies[1], writers=2) as load:
        time.sleep(1)
        status, body = proxies[0].api("POST", "/switchover", {"target": "standby1"})
        assert status == 200, body
        wait_for(lambda: proxies[1].api("GET", "/topology")[1]["primary"] == "standby1", 10,
                 "the other member following the switchover")
        time.sleep(0.5)
    assert writes_to(proxies[1]) == writes_to(proxies[0]) == ha_cluster.ports[1]
    assert not load.errors, load.errors[:3]
    present = {r[0] for r in query(ha_cluster.ports[1], "select id from ha_rows")}
    assert load.acked and not [i for i in load.acked if i not in present]
    assert proxies[1].api("GET", "/fleet")[1]["decision"]["kind"] == "switchover"


def test_a_switchover_waits_for_a_write_under_way_at_another_member(start_proxy, ha_cluster, etcd):  # noqa: F811
    """A write another member's client is running on the old primary when the switchover starts
    is drained by that member before the old primary's WAL head is read: its INSERT 0 1 is a row
    the new primary has."""
    proxies = fleet_proxies(start_proxy, ha_cluster, etcd, count=2, failover={"switchover_timeout": 10.0})
    wait_members(proxies, 2)
    conn = proxies[1].connect()
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("select 1")
    running = Background(cur, "insert into ha_rows (id) select -7 from pg_sleep(1.5)", fetch=False)
    time.sleep(0.4)  # (under way on the old primary, through the other member)
    status, body = proxies[0].api("POST", "/switchover", {"target": "standby1"})
    assert status == 200, body
    assert running.join(10) and running.got == ["INSERT 0 1"], running.got
    assert query(ha_cluster.ports[1], "select count(*) from ha_rows where id = -7") == [(1,)]
    wait_for(lambda: proxies[1].api("GET", "/topology")[1]["primary"] == "standby1", 10,
             "the other member following the switchover")
    conn.close()


def raw_login(port):
    """A protocol client: (socket, BackendKeyData body)."""
    s = socket.create_connection(("127.0.0.1", port), 5)
    body = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    key, buf = None, b""
    while True:
        while len(buf) < 5 or len(buf) < 1 + struct.unpack("!I", buf[1:5])[0]:
            buf += s.recv(65536)
        n = struct.unpack("!I", buf[1:5])[0]
        kind, payload, buf = buf[:1], buf[5:1 + n], buf[1 + n:]
        if kind == b"K":
            key = payload
        elif kind == b"Z":
            return s, key


def test_a_cancel_sent_to_another_member_reaches_its_query(start_proxy, ha_cluster, etcd):  # noqa: F811
    proxies = fleet_proxies(start_proxy, ha_cluster, etcd, count=2)
    wait_members(proxies, 2)
    ids = {m["peer_id"] for m in proxies[0].api("GET", "/fleet")[1]["members"]}
    assert len(ids) == 2 and 0 not in ids
    for sender in (proxies[1], proxies[0]):  # another member; the owner itself
        s, key = raw_login(proxies[0].port)
        query_text = b"select pg_sleep(5)\0"
        s.sendall(b"Q" + struct.pack("!I", len(query_text) + 4) + query_text)
        time.sleep(0.3)
        started = time.monotonic()
        c = socket.create_connection(("127.0.0.1", sender.port), 5)
        c.sendall(struct.pack("!II", 16, 80877102) + key)
        assert c.recv(16) == b""  # closed once the backend took it
        c.close()
        s.settimeout(5)
        data = b""
        while b"Z\0\0\0\5" not in data:
            data += s.recv(65536)
        s.close()
        assert b"57014" in data and time.monotonic() - started < 2
    # a key no member owns cancels nothing and costs nothing
    c = socket.create_connection(("127.0.0.1", proxies[1].port), 5)
    c.sendall(struct.pack("!IIii", 16, 80877102, 1234, 0x7700))
    assert c.recv(16) == b""
    c.close()
    assert proxies[1].query("select 1") == [(1,)]


def test_the_fleet_lists_its_members_and_the_primary_each_sees(start_proxy, ha_cluster, etcd):  # noqa: F811
    proxies = fleet_proxies(start_proxy, ha_cluster, etcd, count=2)
    wait_members(proxies, 2)
    fleet = proxies[1].api("GET", "/fleet")[1]
    assert fleet["me"] == "p1" and fleet["agree_on_primary"] and not fleet["error"]
    assert {m["name"]: m["view"]["primary"] for m in fleet["members"]} == {"p0": "primary", "p1": "primary"}
    assert {m["address"] for m in fleet["members"]} == {f"127.0.0.1:{p.port}" for p in proxies}
    # a member listed before it has told what it sees (just registered) disagrees with no one
    etcd.put("/helios/default/members/p9", json.dumps({"name": "p9", "address": "127.0.0.1:9"}))
    try:
        wait_for(lambda: len(proxies[1].api("GET", "/fleet")[1]["members"]) == 3, 5, "p9 listed")
        fleet = proxies[1].api("GET", "/fleet")[1]
        assert fleet["agree_on_primary"] and [m["view"] for m in fleet["members"] if m["name"] == "p9"] == [None]
    finally:
        etcd.delete("/helios/default/members/p9")
    status, _ = proxies[0].api("POST", "/nodes/standby2/disable", {"reason": "maintenance"})
    assert status == 200  # disabled at one member: out of traffic on every member

    def fenced(p):
        return {n["name"]: n["fenced"] for n in p.api("GET", "/nodes")[1]}["standby2"]
    wait_for(lambda: fenced(proxies[1]) and "maintenance" in fenced(proxies[1]), 5, "standby2 fenced on p1")
    reads = {proxies[1].query("select inet_server_port()")[0][0] for _ in range(20)}
    assert ha_cluster.ports[2] not in reads
    assert proxies[1].api("POST", "/nodes/standby2/enable")[0] == 200  # enabled at another: back everywhere
    wait_for(lambda: not fenced(proxies[0]), 5, "standby2 back on p0")
    proxies[0].stop()  # a member that leaves is gone at once (its lease revoked)
    wait_for(lambda: [m["name"] for m in proxies[1].api("GET", "/fleet")[1]["members"]] == ["p1"], 5,
             "the stopped member gone")
    try:
        psycopg2.connect(host="127.0.0.1", port=proxies[1].port, user="postgres", dbname="postgres").close()
    except psycopg2.Error as e:
        raise AssertionError(e)


def test_a_starting_member_sends_no_write_before_it_has_read_the_fleets_keys(start_proxy, ha_cluster, etcd):  # noqa: F811
    """The fleet disabled the primary (the key a member's operator wrote); a member that starts while
    etcd does not answer it yet knows nothing of that: its writes (and logins, which greet from the
    primary's pool) wait for the fleet's keys (57P03 naming them once failover.buffer_timeout
    passed), never go to the disabled node, and follow the fleet once they are read."""
    etcd.put("/helios/default/disabled/primary", "maintenance (at p0)")
    relay = Relay(etcd.port)  # (this member's path to etcd, held until the test lets it through)
    relay.hang()
    try:
        proxy = start_proxy(pool={"mode": "transaction", "max_size": 10}, health=FAST_HEALTH,
                            nodes=ha_nodes(ha_cluster), failover={"mode": "external", "buffer_timeout": 2},
                            fleet={"name": "p1", "dcs_url": f"etcd3://127.0.0.1:{relay.port}", "ttl": 3})
        with pytest.raises(psycopg2.Error) as refused:
            writes_to(proxy)
        assert "the fleet's state in etcd (fleet.dcs_url) is not read yet" in str(refused.value), refused.value
        assert proxy.api("GET", "/fleet")[1]["read"] is False
        relay.hanging = False  # etcd answers now: the member reads the keys and follows them
        wait_for(lambda: proxy.api("GET", "/fleet")[1]["read"], 30, "the fleet's keys read")
        nodes = {n["name"]: n for n in proxy.api("GET", "/nodes")[1]}
        assert "maintenance" in (nodes["primary"]["fenced"] or ""), nodes["primary"]
        with pytest.raises(psycopg2.Error) as refused:  # the node the fleet disabled takes no write
            writes_to(proxy)
        assert "disabled for the fleet: maintenance" in str(refused.value), refused.value
        etcd.delete("/helios/default/disabled/primary")  # enabled again (at another member)
        wait_for(lambda: not {n["name"]: n for n in proxy.api("GET", "/nodes")[1]}["primary"]["fenced"], 10,
                 "the primary enabled again")
        assert writes_to(proxy) == ha_cluster.ports[0]
    finally:
        relay.close()
