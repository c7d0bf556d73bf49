"""Following Patroni through its DCS (`[topology] provider = "patroni"` with `dcs_url =
"etcd3://HOST:PORT[,HOST:PORT...]"`): the proxy reads and then *watches* the keys Patroni keeps in
etcd under `{namespace}/{scope}/` (leader, members/NAME, sync, failover), so a new leader reaches
every proxy as soon as etcd has it, with no polling interval. etcd's v3 JSON gateway (`/v3/kv/range`,
a streaming `/v3/watch`) is all it needs: no client library.

The leader key names the member that holds the leader lock; that member (by node name, else by the
host and port of its `conn_url`) becomes the confirmed primary. The key deleted (its TTL ran out: the
leader was lost) clears the primary: writes wait in the switchover buffer until a new leader key
appears. While etcd cannot be reached the proxy keeps the primary it knows and tries the endpoints
again; the proxy's own health probes still decide which standbys take reads.
"""
import base64
import http.client
import json
import logging
import time
from urllib.parse import urlparse

import gevent

from .tracker import CONFIRMED, STANDBY

log = logging.getLogger(__name__)
RETRY_S = 0.5


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _text(b64):
    return base64.b64decode(b64).decode("utf-8", "replace") if b64 else ""


def endpoints(dcs_url):
    """[(host, port)] of an etcd3://h:p[,h:p] URL."""
    if not dcs_url.startswith("etcd3://"):
        raise ValueError(f"topology.dcs_url: {dcs_url!r}: expected etcd3://HOST:PORT[,HOST:PORT...]")
    out = []
    for part in dcs_url[len("etcd3://"):].split(","):
        host, _, port = part.strip().rpartition(":")
        out.append((host or "127.0.0.1", int(port)))
    return out


def prefix_end(prefix):
    """etcd's range_end for every key starting with prefix."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class PatroniDcsProvider:
    """Watches Patroni's keys in etcd; tells the tracker who the leader is."""

    def __init__(self, config, tracker):
        self.config, self.tracker = config, tracker
        topology = config.topology
        self.prefix = f"{topology.namespace.rstrip('/')}/{topology.scope}/"
        self.endpoints = endpoints(topology.dcs_url)
        self.keys = {}          # key (without the prefix) -> value
        self.revision = 0
        self.greenlet = None
        self.error = None
        self.changes = 0        # leader changes applied (for /topology)

    def start(self):
        self.greenlet = gevent.spawn(self._run)

    def stop(self):
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
            self.greenlet = None

    # --- etcd ---------------------------------------------------------------------------------
    def _post(self, conn, path, body):
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        return conn.getresponse()

    def _run(self):
        at = 0
        while True:
            host, port = self.endpoints[at % len(self.endpoints)]
            try:
                self._follow(host, port)
            except (OSError, ValueError, http.client.HTTPException) as e:
                if self.error is None:
                    log.error("patroni dcs: etcd %s:%s unreachable (%s); the primary stays as it was", host, port, e)
                self.error = f"{host}:{port}: {e}"
            at += 1
            gevent.sleep(RETRY_S)

    def _follow(self, host, port):
        """Read every key once, then apply each change etcd streams (until the connection ends)."""
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            answer = json.load(self._post(conn, "/v3/kv/range", {"key": _b64(self.prefix),
                                                                  "range_end": prefix_end(self.prefix)}))
            self.keys = {_text(kv["key"])[len(self.prefix):]: _text(kv.get("value")) for kv in answer.get("kvs", [])}
            self.revision = int(answer.get("header", {}).get("revision", 0))
            if self.error is not None:
                log.warning("patroni dcs: etcd %s:%s reachable again", host, port)
            self.error = None
            self.apply()
        finally:
            conn.close()
        watch = http.client.HTTPConnection(host, port, timeout=None)  # (a stream: it waits for changes)
        try:
            response = self._post(watch, "/v3/watch", {"create_request": {
                "key": _b64(self.prefix), "range_end": prefix_end(self.prefix), "start_revision": self.revision + 1}})
            while True:
                line = response.readline()
                if not line:
                    raise OSError("the watch stream ended")
                result = json.loads(line).get("result", {})
                events = result.get("events") or []
                for event in events:
                    kv = event.get("kv", {})
                    key = _text(kv.get("key"))[len(self.prefix):]
                    if event.get("type") == "DELETE":
                        self.keys.pop(key, None)
                    else:
                        self.keys[key] = _text(kv.get("value"))
                    self.revision = max(self.revision, int(kv.get("mod_revision", 0)))
                if events:
                    self.apply()
        finally:
            watch.close()

    # --- what the keys mean -------------------------------------------------------------------
    def member(self, name):
        try:
            return json.loads(self.keys.get(f"members/{name}", "") or "{}")
        except ValueError:
            return {}

    def node_for(self, name):
        for node in self.config.nodes:
            if node.name == name:
                return node
        url = urlparse(self.member(name).get("conn_url", ""))
        for node in self.config.nodes:
            if url.hostname == node.host and (url.port or 5432) == node.port:
                return node
        return None

    def apply(self):
        tracker = self.tracker
        leader_name = self.keys.get("leader")
        for key in self.keys:
            if key.startswith("members/") and key[len("members/"):] != leader_name:
                node = self.node_for(key[len("members/"):])
                if node is not None and self.member(key[len("members/"):]).get("state") in ("running", "streaming"):
                    tracker.roles[node.name] = STANDBY
        if not leader_name:
            if tracker.primary is not None:
                tracker.clear_primary("Patroni's leader key is gone (its lock expired)")
            return
        node = self.node_for(leader_name)
        if node is None:
            log.error("patroni dcs: the leader %r is none of the configured nodes", leader_name)
            return
        if tracker.primary != node.name or tracker.state != CONFIRMED:
            self.changes += 1
            log.warning("patroni dcs: leader %s (revision %d)", node.name, self.revision)
            tracker.take_over(node.name, f"Patroni leader (etcd revision {self.revision})")

    def view(self):
        return {"dcs": self.config.topology.dcs_url, "prefix": self.prefix, "revision": self.revision,
                "leader": self.keys.get("leader"), "error": self.error, "changes": self.changes,
                "at": time.time()}
