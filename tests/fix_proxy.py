"""Run the real `helios-proxy run` as a subprocess with a generated TOML config."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psycopg2
import pytest

from helios_proxy.devcluster import free_port

BIN = os.path.join(os.path.dirname(sys.executable), "helios-proxy")


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def render_config(sections, nodes):
    lines = []
    for section, values in sections.items():
        if isinstance(values, list):  # [[section]] tables (limits)
            for table in values:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
                lines.append("")
            continue
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}  # [section.NAME]
        arrays = {k: v for k, v in values.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if k not in tables and k not in arrays]
        lines.append("")
        for name, table in tables.items():
            lines.append(f'[{section}."{name}"]')
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
            lines.append("")
        for name, entries in arrays.items():  # [[section.NAME]]
            for table in entries:
                lines.append(f"[[{section}.{name}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
                lines.append("")
    for node in nodes:
        lines.append("[[nodes]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in node.items()]
        lines.append("")
    return "\n".join(lines)


class ProxyProcess:
    def __init__(self, workdir, cluster, **sections):
        self.port = free_port()
        self.workdir = workdir
        sections.setdefault("server", {})
        sections["server"].setdefault("listen", f"127.0.0.1:{self.port}")
        if os.environ.get("HELIOS_TEST_FAST_PATH") == "0":  # the suite with the fast path off (.ci/run)
            sections["server"].setdefault("fast_path", False)
        self.admin_port = free_port()
        while self.admin_port == self.port:  # free_port() may hand out the same port twice
            self.admin_port = free_port()
        sections.setdefault("admin", {})
        sections["admin"].setdefault("listen", f"127.0.0.1:{self.admin_port}")
        sections["admin"].setdefault("token", "test-token")
        self.nodes = sections.pop("nodes", None) or [
            {"name": "primary", "host": "127.0.0.1", "port": cluster.primary_port, "role": "primary"}]
        self.sections = sections
        self.config_path = os.path.join(workdir, f"helios-{self.port}.toml")
        self.log_path = os.path.join(workdir, f"helios-{self.port}.log")
        self.proc = None

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(render_config(self.sections, self.nodes))

    def start(self, wait=True, env=None):
        self.write_config()
        self.log = open(self.log_path, "ab")
        # where the proxy logs ([log] file, else its output) and how long it was: a restart appends
        self.logs_to = self.sections.get("log", {}).get("file") or self.log_path
        self.log_from = os.path.getsize(self.logs_to) if os.path.exists(self.logs_to) else 0
        self.proc = subprocess.Popen([BIN, "run", "-c", self.config_path], stdout=self.log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout=15):
        """Until the proxy serves: its port accepts and it logged that its start is over. (The port
        accepts earlier: its listener is bound while the topology provider has its first say,
        clients wait in the kernel's backlog meanwhile; the admin API answers then too.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"helios-proxy exited with {self.proc.returncode}:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if self.started():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"helios-proxy did not listen on {self.port}:\n{self.output()}")

    def started(self):
        """Whether this run logged the end of its start."""
        try:
            with open(self.logs_to, "rb") as f:
                f.seek(self.log_from)
                return b"HeliosProxy listening on" in f.read()
        except OSError:
            return False

    def output(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def dsn(self, **kw):
        params = dict(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        params.update(kw)
        return " ".join(f"{k}={v}" for k, v in params.items())

    def connect(self, **kw):
        params = dict(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=10)
        params.update(kw)
        return psycopg2.connect(**params)

    def query(self, sql):
        """sql's rows (the row count for a statement without) over a fresh autocommit connection."""
        conn = self.connect()
        try:
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute(sql)
            return cur.fetchall() if cur.description else cur.rowcount
        finally:
            conn.close()

    def api(self, method, path, body=None, token="test-token"):
        """(status, JSON) from the admin API."""
        import json
        import urllib.error
        import urllib.request
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def get(self, path):
        """The JSON of a GET on the admin API that must answer 200."""
        status, body = self.api("GET", path)
        assert status == 200, (path, status, body)
        return body

    def autocommit(self, **kw):
        """(connection, cursor) of a new autocommit psycopg2 connection."""
        conn = self.connect(**kw)
        conn.autocommit = True
        return conn, conn.cursor()

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()
        assert "Traceback" not in self.output(), self.output()


@pytest.fixture
def start_proxy(cluster, tmp_path):
    """start_proxy(server={...}, pool={...}, auth={...}, nodes=[...]) -> a running ProxyProcess."""
    started = []

    def start(**sections):
        p = ProxyProcess(str(tmp_path), cluster, **sections).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture(scope="module")
def proxy(cluster, tmp_path_factory):
    """A shared session-mode, trust-auth proxy in front of the primary."""
    p = ProxyProcess(str(tmp_path_factory.mktemp("proxy")), cluster, pool={"max_size": 10}).start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def psql_bin():
    path = shutil.which("psql")
    if not path:
        pytest.skip("psql not installed")
    return path
