"""A tenant PostgreSQL can verify: the proxy signs "this backend serves tenant T", and the
SECURITY DEFINER function `helios.tenant()` (installed by `helios-proxy tenancy install`) checks
the signature, so row-level security policies written `using (tenant = helios.tenant())` hold
whatever SQL a client runs.

The proof is the session setting `helios.tenant_proof` = `v1:<backend pid>:<tenant>:<hmac>`, the
HMAC-SHA256 of `v1:<pid>:<tenant>` under a key only the proxy (its key file) and the function's
owner (table helios.key, no privilege for anyone else) can read. It is set with a parameter of the
extended protocol, so its value never appears in a query text (pg_stat_activity shows
`set_config('helios.tenant_proof', $1, false)`), only in the setting of the session it is set on.
A client can read and write its own session's setting, but it can only ever learn the proof of
its own tenant on this backend; anything else it writes fails the check (NULL: no rows). The proof
is set again at the start of every lease, before any byte of the client, so nothing a tenant
leaves on a server connection (SET, set_config in a function, an aborted SET LOCAL) reaches the
next client, of its tenant or another.
"""
import hashlib
import hmac
import logging
import os
import secrets
import time

log = logging.getLogger(__name__)

PROOF_SETTING = "helios.tenant_proof"
VERSION = "v1"
SET_PROOF = f"SELECT pg_catalog.set_config('{PROOF_SETTING}', $1, false)"
RETRY_S = 1.0  # a missing key file is looked for again at most this often


def default_key_file(config):
    """tenancy.key_file, or next to the config file."""
    if config.tenancy.key_file:
        return config.tenancy.key_file
    return (config.source + ".tenancy-key") if config.source else ""


def read_key(path):
    """The key (bytes) from its file (hex), or None when there is none yet."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: not a hex key (made by `helios-proxy tenancy install`)") from None
    if len(key) < 32:
        raise ValueError(f"{path}: the key is shorter than 32 bytes")
    return key


def make_key(path):
    """A new random key in path (mode 0600); returns it."""
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def pads(key):
    """HMAC's inner and outer keys (RFC 2104), stored by the install so that SQL computes HMAC-SHA256
    with two sha256() calls: sha256(outer || sha256(inner || message))."""
    block = key if len(key) <= 64 else hashlib.sha256(key).digest()
    block = block.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)


def sign(key, pid, tenant):
    message = f"{VERSION}:{pid}:{tenant}"
    return message + ":" + hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class Prover:
    """The proxy's side: the key, read from the key file (again after a reload, and while it is
    missing at most once a second), and the proof of each lease."""

    def __init__(self, config):
        self.configure(config)

    def configure(self, config):
        self.path = default_key_file(config)
        self.key, self.looked = None, 0.0
        self.warned = False
        self._load()

    def _load(self):
        self.looked = time.monotonic()
        if not self.path:
            return
        try:
            self.key = read_key(self.path)
        except (OSError, ValueError) as e:
            self.key = None
            log.error("tenancy: %s: helios.tenant() returns NULL (no rows) until it is fixed", e)
            return
        if self.key is None and not self.warned:
            self.warned = True
            log.warning("tenancy: no key file %s yet: helios.tenant() returns NULL (no rows) until "
                        "`helios-proxy tenancy install -c CONFIG` made it", self.path)

    def proof(self, server, tenant):
        """The proof for tenant on this server connection ('' without a key: helios.tenant() is NULL)."""
        if self.key is None and time.monotonic() - self.looked > RETRY_S:
            self._load()
        if self.key is None:
            return ""
        return sign(self.key, server.pid, tenant.name)

    def establish(self, server, tenant):
        """Set the proof on server, before the tenant's client sends anything there (raises
        BackendError; the caller closes the connection then)."""
        server.execute(SET_PROOF, [self.proof(server, tenant)])
