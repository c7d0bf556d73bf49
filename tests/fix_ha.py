"""A primary + synchronous standby1 + asynchronous standby2 that a test may break: each test gets a
fresh copy of a cluster built once per session, on free ports."""
import json
import os
import subprocess
import tempfile

import psycopg2
import pytest

from helios_proxy.devcluster import Cluster, free_ports


@pytest.fixture(scope="session")
def ha_template():
    base = tempfile.mkdtemp(prefix="helios-test-ha-")
    os.chmod(base, 0o755)
    c = Cluster(os.path.join(base, "template"), standbys=2).start()
    c.sql("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
    c.sql("SELECT pg_reload_conf()")
    c.sql("CREATE TABLE ha_rows (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
    c.wait_replayed()
    for i in reversed(range(3)):  # a clean stop: the copies start without crash recovery
        c._run("pg_ctl", "-D", c.datadir(i), "-m", "fast", "-w", "stop")
    yield c
    subprocess.run(["rm", "-rf", base])


@pytest.fixture
def ha_cluster(ha_template):
    """A running copy of the template: ports[0] primary, ports[1] sync standby1, ports[2] async standby2."""
    base = tempfile.mkdtemp(prefix="helios-test-ha-")
    os.chmod(base, 0o755)
    target = os.path.join(base, "cluster")
    subprocess.run(["cp", "-a", ha_template.base, target], check=True)
    for name in ("ports.json", "primary.log", "standby1.log", "standby2.log"):
        path = os.path.join(target, name)
        if os.path.exists(path):
            os.remove(path)
    ports = free_ports(3)  # three different ones
    old_primary = ha_template.ports[0]
    for i in (1, 2):
        auto = os.path.join(target, f"standby{i}", "postgresql.auto.conf")
        with open(auto) as f:
            text = f.read()
        with open(auto, "w") as f:
            f.write(text.replace(f"port={old_primary} ", f"port={ports[0]} "))
    for d in ("primary", "standby1", "standby2"):
        conf = os.path.join(target, d, "postgresql.conf")
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace(ha_template.base, target))
    with open(os.path.join(target, "ports.json"), "w") as f:
        json.dump(ports, f)
    c = Cluster(target, standbys=2)
    try:
        c.start()
        wait_sync(c)
    except BaseException:  # a node that did not start: the others must not outlive the test
        c.destroy()
        subprocess.run(["rm", "-rf", base])
        raise
    yield c
    c.destroy()
    subprocess.run(["rm", "-rf", base])


def wait_sync(cluster, timeout=30):
    import time
    deadline = time.monotonic() + timeout
    while cluster.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'standby1' "
                      "AND sync_state = 'sync'").strip() != "1":
        if time.monotonic() > deadline:
            raise TimeoutError("standby1 did not become synchronous")
        time.sleep(0.05)


def ha_nodes(cluster):
    return [{"name": "primary", "host": "127.0.0.1", "port": cluster.ports[0], "role": "primary"},
            {"name": "standby1", "host": "127.0.0.1", "port": cluster.ports[1], "role": "standby"},
            {"name": "standby2", "host": "127.0.0.1", "port": cluster.ports[2], "role": "standby"}]


def connect(port, **kw):
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=10,
                            **kw)
    conn.autocommit = True
    return conn


def query(port, sql):
    conn = connect(port)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()
    finally:
        conn.close()
