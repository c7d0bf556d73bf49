"""A throwaway etcd (Debian's etcd-server, installed by scripts/setup-system --test) on free loopback
ports, data in a temporary folder; stopped at the end. put()/delete() write keys as Patroni would."""
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

from helios_proxy.devcluster import free_ports


class Etcd:
    def __init__(self):
        self.port, self.peer = free_ports(2)
        self.dir = tempfile.mkdtemp(prefix="helios-test-etcd-")
        self.proc = None

    @property
    def url(self):
        return f"etcd3://127.0.0.1:{self.port}"

    def start(self):
        binary = shutil.which("etcd")
        if binary is None:
            pytest.fail("etcd is not installed (scripts/setup-system --test installs etcd-server)")
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer}"
        self.proc = subprocess.Popen([binary, "--name", "test", "--data-dir", self.dir, "--listen-client-urls", client,
                                      "--advertise-client-urls", client, "--listen-peer-urls", peer,
                                      "--initial-advertise-peer-urls", peer, "--initial-cluster", f"test={peer}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.call("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"etcd does not answer on {self.port}")

    def call(self, path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)

    def put(self, key, value):
        self.call("/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                 "value": base64.b64encode(value.encode()).decode()})

    def delete(self, key):
        self.call("/v3/kv/deleterange", {"key": base64.b64encode(key.encode()).decode()})

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def etcd():
    server = Etcd().start()
    yield server
    server.stop()
