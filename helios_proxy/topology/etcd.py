"""A small etcd v3 client over etcd's JSON gateway (`/v3/...`, keys and values base64): what the
proxy needs from the DCS its users already run, with no client library. Under gevent's monkey
patching http.client is cooperative, so every call is a greenlet's wait, never the loop's.

`Etcd(url)` takes `etcd3://HOST:PORT[,HOST:PORT...]`; a call tries the endpoints in turn and raises
EtcdUnavailable when none answers. The parts used: range (one key or a prefix), put (optionally
bound to a lease), delete, create-if-absent (a transaction on create_revision = 0: the standard
lock/election recipe), leases (grant, keep alive, revoke), a watch stream, and a Mirror of the keys
under a prefix that one watch keeps up to date.
"""
import base64
import http.client
import json

TIMEOUT_S = 2.0


class EtcdUnavailable(OSError):
    """No endpoint answered (or one answered nonsense)."""


def endpoints(url, key="dcs_url"):
    """[(host, port)] of an etcd3://h:p[,h:p] URL; ValueError naming the key otherwise."""
    if not url.startswith("etcd3://"):
        raise ValueError(f"{key}: {url!r}: expected etcd3://HOST:PORT[,HOST:PORT...]")
    out = []
    for part in url[len("etcd3://"):].split(","):
        host, _, port = part.strip().rpartition(":")
        try:
            out.append((host or "127.0.0.1", int(port)))
        except ValueError:
            raise ValueError(f"{key}: {url!r}: {part.strip()!r} is not HOST:PORT") from None
    return out


def b64(text):
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def text(value):
    return base64.b64decode(value).decode("utf-8", "replace") if value else ""


def prefix_end(prefix):
    """etcd's range_end for every key starting with prefix."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return b64(bytes(raw))


class Etcd:
    def __init__(self, url, key="dcs_url"):
        self.endpoints = endpoints(url, key)
        self.at = 0  # the endpoint that answered last: tried first

    def call(self, path, body, timeout=TIMEOUT_S):
        errors = []
        for i in range(len(self.endpoints)):
            host, port = self.endpoints[(self.at + i) % len(self.endpoints)]
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = json.loads(response.read() or b"{}")
                if response.status != 200:
                    raise EtcdUnavailable(f"{path}: HTTP {response.status}: {answer.get('error', answer)}")
                self.at = (self.at + i) % len(self.endpoints)
                return answer
            except (OSError, ValueError, http.client.HTTPException) as e:
                errors.append(f"{host}:{port}: {e}")
            finally:
                conn.close()
        raise EtcdUnavailable("; ".join(errors))

    # --- keys ----------------------------------------------------------------------------------
    def range(self, key, prefix=False):
        """({key: value}, revision) of one key, or of every key under prefix."""
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        answer = self.call("/v3/kv/range", body)
        kvs = {text(kv["key"]): text(kv.get("value")) for kv in answer.get("kvs", [])}
        return kvs, int(answer.get("header", {}).get("revision", 0))

    def put(self, key, value, lease=None):
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = lease
        self.call("/v3/kv/put", body)

    def delete(self, key):
        self.call("/v3/kv/deleterange", {"key": b64(key)})

    def create(self, key, value, lease=None):
        """Put key only if it does not exist; (created, the value it holds now)."""
        put = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = lease
        answer = self.call("/v3/kv/txn", {
            "compare": [{"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": put}], "failure": [{"request_range": {"key": b64(key)}}]})
        if answer.get("succeeded"):
            return True, value
        kvs = answer.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
        return False, text(kvs[0].get("value")) if kvs else None

    def delete_if(self, key, value):
        """Delete key only while it holds value (a lock released by its holder only)."""
        self.call("/v3/kv/txn", {"compare": [{"key": b64(key), "result": "EQUAL", "target": "VALUE",
                                              "value": b64(value)}],
                                 "success": [{"request_delete_range": {"key": b64(key)}}]})

    # --- leases --------------------------------------------------------------------------------
    def grant(self, ttl):
        return self.call("/v3/lease/grant", {"TTL": int(ttl)})["ID"]

    def keepalive(self, lease):
        """True while the lease lives (etcd answers TTL 0, or nothing, for one that expired)."""
        result = self.call("/v3/lease/keepalive", {"ID": lease}).get("result", {})
        return int(result.get("TTL", 0)) > 0

    def revoke(self, lease):
        self.call("/v3/lease/revoke", {"ID": lease})

    # --- watching ------------------------------------------------------------------------------
    def watch(self, prefix, start_revision):
        """Yield (type, key, value, mod_revision) for each change under prefix from start_revision on,
        as etcd streams them; raises OSError when the stream ends."""
        host, port = self.endpoints[self.at]
        conn = http.client.HTTPConnection(host, port, timeout=None)  # (a stream: it waits for changes)
        try:
            conn.request("POST", "/v3/watch", json.dumps({"create_request": {
                "key": b64(prefix), "range_end": prefix_end(prefix), "start_revision": start_revision}}),
                {"Content-Type": "application/json"})
            response = conn.getresponse()
            while True:
                line = response.readline()
                if not line:
                    raise EtcdUnavailable("the watch stream ended")
                for event in json.loads(line).get("result", {}).get("events") or []:
                    kv = event.get("kv", {})
                    yield (event.get("type", "PUT"), text(kv.get("key")), text(kv.get("value")),
                           int(kv.get("mod_revision", 0)))
                yield None  # (one batch of changes ends here)
        finally:
            conn.close()


class Mirror:
    """The keys under a prefix (without it) and their revision, kept up to date by one watch
    stream: what the Patroni provider and the fleet coordinator read."""

    def __init__(self, etcd, prefix):
        self.etcd, self.prefix = etcd, prefix
        self.keys, self.revision = {}, 0

    def follow(self, changed):
        """Read every key, changed(True); then apply each batch of changes etcd streams and call
        changed(False) after it. Returns only by raising OSError (the stream ended)."""
        cut = len(self.prefix)
        keys, self.revision = self.etcd.range(self.prefix, prefix=True)
        self.keys = {key[cut:]: value for key, value in keys.items()}
        changed(True)
        dirty = False
        for change in self.etcd.watch(self.prefix, self.revision + 1):
            if change is None:  # the end of one batch of changes
                if dirty:
                    changed(False)
                dirty = False
                continue
            kind, key, value, revision = change
            if kind == "DELETE":
                self.keys.pop(key[cut:], None)
            else:
                self.keys[key[cut:]] = value
            self.revision, dirty = max(self.revision, revision), True

    def json(self, key):
        """The object a key holds as JSON, or None (absent, not JSON, or not an object)."""
        try:
            value = json.loads(self.keys.get(key) or "null")
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


class Follower:
    """For a class that follows a prefix through self.mirror: its keys and revision."""
    keys = property(lambda self: self.mirror.keys)
    revision = property(lambda self: self.mirror.revision)
