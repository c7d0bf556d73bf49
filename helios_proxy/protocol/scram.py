"""SCRAM-SHA-256 (RFC 5802/7677) for both ends, and MD5 password hashing; sans-I/O.

The proxy is a SCRAM server to its clients and a SCRAM client to PostgreSQL. When it only knows a
SCRAM secret (not the password), it recovers the client's ClientKey from a verified proof and
uses that key to log in to the backend, as PgBouncer does.
"""
import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata
from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096


def b64(data):
    return base64.b64encode(data).decode()


def unb64(text):
    return base64.b64decode(text, validate=True)


def hmac_sha256(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def saslprep(password):
    """SASLprep (RFC 4013) as PostgreSQL applies it: on prohibited input, use the raw password."""
    if password.isascii():
        return password
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in password
                     if not stringprep.in_table_b1(c))
    norm = unicodedata.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
                  stringprep.in_table_a1)
    if any(check(c) for c in norm for check in prohibited):
        return password
    return norm


@dataclass(frozen=True)
class ScramSecret:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text):
        """Parse PostgreSQL's `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`; None if not one."""
        try:
            scheme, params, keys = text.split("$")
            iterations, salt = params.split(":")
            stored, server = keys.split(":")
            if scheme != MECHANISM:
                return None
            return cls(int(iterations), unb64(salt), unb64(stored), unb64(server))
        except ValueError:
            return None

    @classmethod
    def from_password(cls, password, salt=None, iterations=DEFAULT_ITERATIONS, derive=None):
        """derive: how to run salted_password (e.g. off the event loop); the plain call by default."""
        salt = salt or os.urandom(16)
        salted = (derive or salted_password)(password, salt, iterations)
        client_key = hmac_sha256(salted, b"Client Key")
        return cls(iterations, salt, hashlib.sha256(client_key).digest(), hmac_sha256(salted, b"Server Key"))

    def __str__(self):
        return (f"{MECHANISM}${self.iterations}:{b64(self.salt)}$"
                f"{b64(self.stored_key)}:{b64(self.server_key)}")


def salted_password(password, salt, iterations):
    return hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)


def _attributes(message):
    attrs = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ValueError(f"malformed SCRAM attribute {part!r}")
        attrs[part[0]] = part[2:]
    return attrs


class ScramServer:
    """Server side of one SCRAM exchange against a stored secret."""

    def __init__(self, secret):
        self.secret = secret
        self.client_key = None  # set once the client's proof verified

    def first(self, client_first):
        """Take client-first-message, return server-first-message."""
        gs2, _, bare = _split_gs2(client_first)
        if gs2.startswith("p"):
            raise ValueError("channel binding is not supported by this server")
        if gs2[:1] not in ("n", "y"):
            raise ValueError("malformed SCRAM gs2 header")
        attrs = _attributes(bare)
        self.client_first_bare = bare
        self.gs2 = gs2
        nonce = attrs.get("r")
        if not nonce:
            raise ValueError("SCRAM client nonce missing")
        self.nonce = nonce + b64(os.urandom(18))
        self.server_first = f"r={self.nonce},s={b64(self.secret.salt)},i={self.secret.iterations}"
        return self.server_first

    def final(self, client_final):
        """Take client-final-message, verify the proof, return server-final-message or raise."""
        without_proof, _, proof_part = client_final.rpartition(",p=")
        attrs = _attributes(without_proof)
        if attrs.get("r") != self.nonce:
            raise ValueError("SCRAM nonce mismatch")
        if attrs.get("c") != b64(self.gs2.encode()):
            raise ValueError("SCRAM channel binding mismatch")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        proof = unb64(proof_part)
        client_key = _xor(proof, hmac_sha256(self.secret.stored_key, auth_message))
        if len(proof) != 32 or not hmac.compare_digest(hashlib.sha256(client_key).digest(),
                                                       self.secret.stored_key):
            raise PermissionError("SCRAM proof does not match")
        self.client_key = client_key
        return "v=" + b64(hmac_sha256(self.secret.server_key, auth_message))


def _split_gs2(message):
    # gs2-header is "cbind-flag,[authzid]," then the bare message.
    parts = message.split(",", 2)
    if len(parts) != 3:
        raise ValueError("malformed SCRAM client-first-message")
    return parts[0] + "," + parts[1] + ",", None, parts[2]


class ScramClient:
    """Client side of one SCRAM exchange, from a password or from a recovered ClientKey."""

    def __init__(self, password=None, client_key=None, server_key=None, derive=None):
        self.password = password
        self.derive = derive or salted_password  # may refuse a count or run elsewhere
        self.client_key = client_key
        self.server_key = server_key
        self.nonce = b64(os.urandom(18))
        self.client_first_bare = f"n=,r={self.nonce}"
        self.auth_message = None  # (final() makes it)

    def first(self):
        return "n,," + self.client_first_bare

    def final(self, server_first):
        attrs = _attributes(server_first)
        if not all(attrs.get(k) for k in ("r", "s", "i")):
            raise ValueError("SCRAM server-first-message lacks r, s or i")
        if not attrs["r"].startswith(self.nonce):
            raise ValueError("SCRAM server nonce does not extend ours")
        salt, iterations = unb64(attrs["s"]), int(attrs["i"])
        if self.password is not None:
            salted = self.derive(self.password, salt, iterations)
            self.client_key = hmac_sha256(salted, b"Client Key")
            self.server_key = hmac_sha256(salted, b"Server Key")
        without_proof = f"c={b64(b'n,,')},r={attrs['r']}"
        self.auth_message = f"{self.client_first_bare},{server_first},{without_proof}".encode()
        stored_key = hashlib.sha256(self.client_key).digest()
        proof = _xor(self.client_key, hmac_sha256(stored_key, self.auth_message))
        return f"{without_proof},p={b64(proof)}"

    def verify(self, server_final):
        attrs = _attributes(server_final)
        if "e" in attrs:
            raise PermissionError(f"SCRAM error from server: {attrs['e']}")
        if self.auth_message is None:
            raise ValueError("SCRAM server-final-message before the server-first-message")
        expected = hmac_sha256(self.server_key, self.auth_message)
        if not hmac.compare_digest(unb64(attrs.get("v", "")), expected):
            raise PermissionError("SCRAM server signature is wrong")


def md5_hash(password, user):
    """PostgreSQL's stored form: 'md5' + md5(password + user)."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def md5_response(stored_md5, salt):
    """The reply to an MD5 challenge, from the stored form ('md5...')."""
    return "md5" + hashlib.md5(stored_md5[3:].encode() + salt).hexdigest()
