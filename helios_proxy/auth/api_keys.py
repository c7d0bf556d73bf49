"""The api_key method: the client's password is a key made by `helios-proxy apikey create USER`.

A key is `hpk_<id>_<secret>`; the file (`[auth.api_keys] file`, JSON, mode 0600) keeps per id the
user, the scrypt hash of the secret and its salt, the expiry and the databases it may open (none:
all). The key itself is printed once and never stored. scrypt runs in gevent's thread pool: other
clients do not wait for it.

In a fleet coordinated through etcd (`[fleet] dcs_url`) the keys live there instead, one key per id
under `/helios/{fleet.cluster}/apikeys/`: `helios-proxy apikey create/revoke` writes them, and every
member sees a change as its watch does (topology/fleet_dcs.py), within moments.
"""
import hashlib
import hmac
import json
import os
import secrets
import time

from .rules import Refused

SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 32}
PREFIX = "hpk_"


DECOY_SALT = os.urandom(16)


def _hash(secret, salt):
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)


def load(path):
    """{id: entry}; a missing or empty file holds no key."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    return json.loads(text).get("keys", {}) if text.strip() else {}


def save(path, keys):
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"keys": keys}, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class FileStore:
    """The keys in auth.api_keys.file."""

    def __init__(self, path):
        self.path = path

    def load(self):
        return load(self.path)

    def put(self, key_id, entry):
        keys = load(self.path)
        keys[key_id] = entry
        save(self.path, keys)

    def delete(self, key_id):
        keys = load(self.path)
        if keys.pop(key_id, None) is None:
            return False
        save(self.path, keys)
        return True


class EtcdStore:
    """The keys of a fleet, in etcd."""

    def __init__(self, config):
        from ..topology.etcd import Etcd
        self.etcd = Etcd(config.fleet.dcs_url, "fleet.dcs_url")
        self.prefix = f"/helios/{config.fleet.cluster}/apikeys/"

    def load(self):
        return entries(self.etcd.range(self.prefix, prefix=True)[0], self.prefix)

    def put(self, key_id, entry):
        self.etcd.put(self.prefix + key_id, json.dumps(entry, sort_keys=True))

    def delete(self, key_id):
        if key_id not in self.load():
            return False
        self.etcd.delete(self.prefix + key_id)
        return True


def entries(kvs, prefix):
    """{id: entry} of etcd keys under prefix (a malformed one is skipped)."""
    out = {}
    for key, value in kvs.items():
        if key.startswith(prefix):
            try:
                out[key[len(prefix):]] = json.loads(value)
            except ValueError:
                continue
    return out


def store(config):
    """Where config keeps its keys: etcd for a fleet ([fleet] dcs_url), else auth.api_keys.file."""
    return EtcdStore(config) if config.fleet.dcs_url else FileStore(config.auth.api_keys.file)


def create(keystore, user, days=None, databases=(), tenant=None):
    """A new key for user: (key, id). Only its hash is stored."""
    keys = keystore.load()
    key_id = secrets.token_hex(4)
    while key_id in keys:
        key_id = secrets.token_hex(4)
    secret, salt = secrets.token_urlsafe(32), os.urandom(16)
    keystore.put(key_id, {"user": user, "salt": salt.hex(), "hash": _hash(secret, salt).hex(),
                          "created": int(time.time()), "expires": int(time.time() + days * 86400) if days else None,
                          "databases": sorted(databases) or None, "tenant": tenant or None})
    return f"{PREFIX}{key_id}_{secret}", key_id


def revoke(keystore, key_id):
    return keystore.delete(key_id)


class ApiKeyMethod:
    def __init__(self):
        self._cache = (None, None, {})  # (path, mtime, keys)
        self.fleet = None  # a FleetCoordinator: the fleet's keys, as its watch of etcd sees them

    def _keys(self, path):
        if self.fleet is not None:
            return self.fleet.api_keys()
        mtime = os.stat(path).st_mtime if os.path.exists(path) else None
        if self._cache[:2] != (path, mtime):  # (a create or revoke rewrites the file: read it again)
            self._cache = (path, mtime, load(path))
        return self._cache[2]

    def check(self, config, user, database, key, tenant=None):
        """The key's entry if it lets user into database (as tenant, [tenancy]); raises Refused. A
        key made for a tenant opens that tenant only."""
        from gevent import get_hub
        if not key.startswith(PREFIX) or key.count("_") < 2:
            raise Refused("not an API key")
        key_id, _, secret = key[len(PREFIX):].partition("_")
        entry = self._keys(config.auth.api_keys.file).get(key_id)
        if entry is None:  # the same work as for a known id: the time does not tell which ids exist
            get_hub().threadpool.apply(_hash, (secret, DECOY_SALT))
            raise Refused(f"no key {key_id}")
        digest = get_hub().threadpool.apply(_hash, (secret, bytes.fromhex(entry["salt"])))
        if not hmac.compare_digest(digest, bytes.fromhex(entry["hash"])):
            raise Refused(f"key {key_id}: wrong secret")
        if entry["user"] != user:
            raise Refused(f"key {key_id} belongs to another user")
        if entry.get("expires") and entry["expires"] < time.time():
            raise Refused(f"key {key_id} expired")
        if entry.get("databases") and database not in entry["databases"]:
            raise Refused(f"key {key_id} does not open database {database}")
        if entry.get("tenant") and entry["tenant"] != tenant:
            raise Refused(f"key {key_id} is tenant {entry['tenant']}'s, not {tenant or 'a tenantless login'}'s")
        return entry


METHOD = ApiKeyMethod()
