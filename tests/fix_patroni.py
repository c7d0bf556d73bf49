"""A real Patroni cluster (PyPI's patroni[etcd3], as users run it) of two PostgreSQL nodes on a
throwaway etcd, on free loopback ports, for one test module; stopped and removed at its end.

Patroni runs as the `postgres` user when the tests run as root, so its venv needs a Python that user
can execute: `scripts/setup-system --test` makes one in /opt/helios-test-patroni (override with
HELIOS_PATRONI_VENV)."""
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

from helios_proxy.devcluster import find_bin_dir, free_ports
from tests.fix_etcd import Etcd

VENV = os.environ.get("HELIOS_PATRONI_VENV", "/opt/helios-test-patroni")
SCOPE = "helios-test"

CONFIG = """scope: {scope}
name: n{i}
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 16777216
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: "on"
  initdb:
  - encoding: UTF8
  pg_hba:
  - host replication repl 127.0.0.1/32 trust
  - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {base}/data{i}
  bin_dir: {bin}
  pgpass: {base}/pgpass{i}
  authentication:
    replication: {{username: repl, password: repl}}
    superuser: {{username: postgres, password: postgres}}
  parameters:
    unix_socket_directories: {base}
    fsync: "off"
"""


class Patroni:
    def __init__(self, etcd, members=2):
        self.etcd, self.count = etcd, members
        self.pg = free_ports(members)
        self.rest = free_ports(members)
        self.base = tempfile.mkdtemp(prefix="helios-test-patroni-")
        os.chmod(self.base, 0o755)
        self.procs = {}
        self.user = "postgres" if os.geteuid() == 0 else None

    def nodes(self):
        """[[nodes]] for the proxy: n0 as the configured primary (Patroni decides from there)."""
        return [{"name": f"n{i}", "host": "127.0.0.1", "port": self.pg[i], "role": "primary" if i == 0 else "standby"}
                for i in range(self.count)]

    def start_member(self, i):
        path = os.path.join(self.base, f"n{i}.yml")
        with open(path, "w") as f:
            f.write(CONFIG.format(scope=SCOPE, i=i, rest=self.rest[i], etcd=self.etcd.port, pg=self.pg[i],
                                  base=self.base, bin=find_bin_dir()))
        if self.user:
            subprocess.run(["chown", "-R", self.user, self.base], check=True)
        log = open(os.path.join(self.base, f"n{i}.log"), "ab")
        self.procs[i] = subprocess.Popen([os.path.join(VENV, "bin", "patroni"), path], user=self.user,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self):
        if not os.access(os.path.join(VENV, "bin", "patroni"), os.X_OK):
            pytest.fail(f"Patroni is not installed in {VENV} (scripts/setup-system --test makes that venv)")
        self.start_member(0)
        self.wait(lambda: self.leader() == "n0", 90, "n0 leading")
        for i in range(1, self.count):
            self.start_member(i)
        self.wait(lambda: sum(m.get("state") == "streaming" for m in self.cluster()["members"]) == self.count - 1,
                  90, "the replicas streaming")
        self.wait(lambda: self.sync_standby() is not None, 30, "a synchronous standby")
        return self

    def wait(self, check, timeout, what):
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"patroni: timed out waiting for {what}: {self.cluster()} "
                                   f"{self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self):
        out = []
        for i in range(self.count):
            try:
                with open(os.path.join(self.base, f"n{i}.log"), errors="replace") as f:
                    out.append(f"n{i}: " + " / ".join(f.read().splitlines()[-3:]))
            except OSError:
                pass
        return "\n".join(out)

    def cluster(self):
        for port in self.rest:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/cluster", timeout=2) as r:
                    return json.load(r)
            except OSError:
                continue
        return {"members": []}

    def leader(self):
        return next((m["name"] for m in self.cluster()["members"] if m["role"] == "leader"), None)

    def sync_standby(self):
        return next((m["name"] for m in self.cluster()["members"] if m["role"] == "sync_standby"), None)

    def patronictl(self, *args):
        return subprocess.run([os.path.join(VENV, "bin", "patronictl"), "-c", os.path.join(self.base, "n0.yml"),
                               *args], capture_output=True, text=True, timeout=120)

    def kill(self, i):
        """kill -9 of member i's Patroni and its PostgreSQL."""
        postmaster = os.path.join(self.base, f"data{i}", "postmaster.pid")
        with open(postmaster) as f:
            pid = int(f.readline())
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()
        os.kill(pid, signal.SIGKILL)

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for i, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            try:  # (a PostgreSQL a killed Patroni left running)
                with open(os.path.join(self.base, f"data{i}", "postmaster.pid")) as f:
                    os.kill(int(f.readline()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        subprocess.run(["rm", "-rf", self.base])


@pytest.fixture(scope="module")
def patroni():
    etcd = Etcd().start()
    cluster = Patroni(etcd)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        etcd.stop()
