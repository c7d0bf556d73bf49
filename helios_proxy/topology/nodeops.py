"""What the failover controller and the planned switchover do to PostgreSQL nodes, as `health.user`
(a superuser, or a role granted pg_promote, ALTER SYSTEM on primary_conninfo and pg_reload_conf):
promote, repoint a standby at a new primary, read and wait for WAL positions, run operator commands.
"""
import logging
import shlex
import subprocess
import time

import gevent

from ..backend.connection import ServerConnection
from ..errors import ProxyError
from ..lsn import lsn

log = logging.getLogger(__name__)


class NodeOperationFailed(ProxyError):
    pass


class NodeOps:
    def __init__(self, config, credentials):
        self.config = config
        self.credentials = credentials  # callable -> Credentials (health.user)

    def run_sql(self, node, sql, timeout=None):
        """sql's rows on node, over a short-lived connection of its own."""
        timeout = timeout or self.config.health.timeout
        conn = ServerConnection(node, self.config.health.database, self.credentials(), self.config)
        try:
            with gevent.Timeout(timeout, NodeOperationFailed(f"{node.name}: no answer in {timeout:g} s")):
                conn.connect({"application_name": "helios-failover"}, connect_timeout=timeout)
                return conn.execute(sql)
        except (OSError, ProxyError) as e:
            if isinstance(e, NodeOperationFailed):
                raise
            raise NodeOperationFailed(f"{node.name}: {getattr(e, 'message', None) or e}") from None
        finally:
            conn.close()

    def promote(self, node):
        """pg_promote() on node, waiting until it is done."""
        wait = int(self.config.failover.command_timeout)
        rows = self.run_sql(node, f"SELECT pg_catalog.pg_promote(true, {wait})", timeout=wait + 5)
        if rows[0][0] != "t":
            raise NodeOperationFailed(f"{node.name}: pg_promote() did not finish within {wait} s")

    def command(self, template, **values):
        """Run an operator's shell command with {placeholders} filled in (shell-quoted)."""
        cmd = template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})
        log.warning("running: %s", cmd)
        try:
            done = subprocess.run(cmd, shell=True, capture_output=True, text=True,
                                  timeout=self.config.failover.command_timeout)
        except subprocess.TimeoutExpired:
            raise NodeOperationFailed(f"command timed out after {self.config.failover.command_timeout:g} s: "
                                      f"{cmd}") from None
        if done.returncode != 0:
            raise NodeOperationFailed(f"command exited with {done.returncode}: {cmd}: "
                                      f"{(done.stderr or done.stdout).strip()[-500:]}")

    def position(self, node):
        """The primary's current WAL write position."""
        return lsn(self.run_sql(node, "SELECT pg_catalog.pg_current_wal_lsn()")[0][0])

    def wait_replayed(self, node, target, timeout):
        """Wait until standby node has replayed WAL position target."""
        deadline = time.monotonic() + timeout
        while True:
            seen = lsn(self.run_sql(node, "SELECT pg_catalog.pg_last_wal_replay_lsn()")[0][0])
            if seen is not None and seen >= target:
                return
            if time.monotonic() >= deadline:
                raise NodeOperationFailed(f"{node.name} has not replayed the primary's WAL within {timeout:g} s")
            gevent.sleep(0.02)

    def streams_to(self, primary, standby):
        """Whether primary's pg_stat_replication shows standby streaming."""
        name = (standby.application_name or standby.name).replace("'", "''")
        rows = self.run_sql(primary, "SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE "
                                     f"application_name = '{name}' AND state = 'streaming'")
        return rows[0][0] != "0"

    def repoint(self, standby, primary):
        """Point standby's streaming replication at primary (host and port in primary_conninfo)."""
        current = self.run_sql(standby, "SELECT setting FROM pg_catalog.pg_settings WHERE name = "
                                        "'primary_conninfo'")
        conninfo = parse_conninfo(current[0][0] if current and current[0][0] else "")
        if not conninfo:
            raise NodeOperationFailed(f"{standby.name}: primary_conninfo is empty or not readable")
        conninfo.update(host=primary.host, port=str(primary.port))
        text = format_conninfo(conninfo).replace("'", "''")
        self.run_sql(standby, f"ALTER SYSTEM SET primary_conninfo = '{text}'")
        self.run_sql(standby, "SELECT pg_catalog.pg_reload_conf()")


def parse_conninfo(text):
    """libpq 'key=value key2=\\'quoted value\\'' -> dict (in order)."""
    out, i, n = {}, 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        eq = text.index("=", i)
        key = text[i:eq].strip()
        i = eq + 1
        while i < n and text[i].isspace():
            i += 1
        value = []
        if i < n and text[i] == "'":
            i += 1
            while i < n and text[i] != "'":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
            i += 1
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
        out[key] = "".join(value)
    return out


def format_conninfo(values):
    def quote(v):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{k}={quote(v)}" for k, v in values.items())
