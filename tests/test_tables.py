"""Schema routing ([[routing.tables]], routing/tables.py) on the real cluster: table rules send reads
to a named node or keep them on the primary, declared and learned temperatures decide how much lag
a read may see (replay paused on both standbys), a read of several tables takes the strictest rule."""
import re
import time

import pytest

from helios_proxy.config import loader
from helios_proxy.errors import ConfigError
from tests.test_routing import nodes, wait_standby_reads

FAST = {"interval": 0.3, "timeout": 2.0}


@pytest.fixture
def tables_proxy(cluster, start_proxy, direct):
    direct.cursor().execute(
        "DROP SCHEMA IF EXISTS tr_reports CASCADE; CREATE SCHEMA tr_reports; "
        "CREATE TABLE tr_reports.daily (x int); INSERT INTO tr_reports.daily VALUES (1); "
        "DROP TABLE IF EXISTS tr_audit, tr_archive, tr_hot; CREATE TABLE tr_audit (x int); "
        "INSERT INTO tr_audit VALUES (1); CREATE TABLE tr_archive (x int); INSERT INTO tr_archive VALUES (1); "
        "CREATE TABLE tr_hot (x int)")
    cluster.wait_replayed()
    proxy = start_proxy(pool={"mode": "transaction"}, nodes=nodes(cluster), health=FAST, routing={
        "max_lag_ms": 500, "cold_max_lag_ms": 600000, "lag_check_interval": 0.2, "tables": [
            {"match": "tr_reports.*", "node": "standby2"}, {"match": "tr_audit", "node": "primary"},
            {"match": "tr_archive", "temperature": "cold"}]})
    wait_standby_reads(proxy)
    return proxy


def ports(proxy, sql, n=12):
    return {proxy.query(sql)[0][0] for _ in range(n)}


def test_rules_send_reads_to_their_node_and_temperature_sets_the_lag_allowed(tables_proxy, cluster):
    proxy = tables_proxy
    assert ports(proxy, "select inet_server_port() from tr_reports.daily") == {cluster.ports[2]}
    assert ports(proxy, "select inet_server_port() from tr_audit") == {cluster.ports[0]}
    assert ports(proxy, "select inet_server_port(), count(*) from tr_archive") <= set(cluster.ports[1:])
    # a read of a table with a node rule and another: the strictest (two nodes: the primary)
    assert ports(proxy, "select inet_server_port() from tr_reports.daily, tr_audit") == {cluster.ports[0]}

    for port in cluster.ports[1:]:
        cluster.sql("SELECT pg_wal_replay_pause()", port=port)
    try:
        proxy.query("insert into tr_hot select generate_series(1, 20000)")  # (learned: tr_hot is hot)
        time.sleep(1.5)  # (the standbys are now more than max_lag_ms = 500 behind)
        assert ports(proxy, "select inet_server_port(), count(*) from tr_hot") == {cluster.ports[0]}
        cold = ports(proxy, "select inet_server_port(), count(*) from tr_archive")
        assert cold <= set(cluster.ports[1:])  # cold: a standby minutes behind will do
        assert ports(proxy, "select inet_server_port() from tr_archive, tr_hot") == {cluster.ports[0]}
    finally:
        for port in cluster.ports[1:]:
            cluster.sql("SELECT pg_wal_replay_resume()", port=port)

    status, rows = proxy.api("GET", "/routing/tables")
    by_name = {r["table"]: r for r in rows}
    assert status == 200
    assert by_name["tr_archive"]["temperature"] == "cold" and by_name["tr_archive"]["source"] == "declared"
    assert by_name["tr_hot"]["temperature"] == "hot" and by_name["tr_hot"]["source"] == "learned"
    assert by_name["tr_reports.daily"]["reads"] == {"standby2": 12, "primary": 12}  # (alone; with tr_audit)
    assert by_name["tr_audit"]["rule"] == {"match": "tr_audit", "node": "primary"}


def test_a_rule_must_name_a_node_or_a_temperature():
    base = {"nodes": [{"name": "p", "port": 5432}]}
    for rule, message in (({"match": "t", "node": "nowhere"}, "'nowhere' is no node name"),
                          ({"match": "t"}, "give either node or temperature"),
                          ({"match": "t", "temperature": "tepid"}, "routing.tables[0].temperature")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            loader.load({**base, "routing": {"tables": [rule]}})
