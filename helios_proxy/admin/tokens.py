"""Who may call the admin API: named bearer tokens with roles, stored as SHA-256 digests.

`admin.tokens` holds "NAME:ROLE:SHA256HEX" entries (`helios-proxy token NAME --role ROLE` makes
one); the single `admin.token` is the role `admin` under the name "admin.token". Roles: `viewer`
reads, `operator` also pauses, resumes, reloads and ends sessions, `admin` may do everything
(switchover, failover, node changes, /api/sql). Tokens are random and long, so a fast digest is
enough to keep them out of the config file; they are compared in constant time.
"""
import hashlib
import hmac
import secrets

ROLES = ("viewer", "operator", "admin")  # (entries are checked by config/schema.py: TOKEN_ENTRY)
# (method, path prefix) an operator may call; every other mutation needs admin
OPERATOR = (("POST", "/pause"), ("POST", "/resume"), ("POST", "/reload"), ("DELETE", "/sessions/"),
            ("POST", "/cache/"))


def digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def new_entry(name, role):
    """(token, config entry) for a new named token."""
    token = secrets.token_urlsafe(32)
    return token, f"{name}:{role}:{digest(token)}"


def identify(config, token):
    """(name, role) of the token under config ([admin]), or None."""
    if config.token and hmac.compare_digest(token.encode(), config.token.encode()):
        return "admin.token", "admin"
    given = digest(token)
    for entry in config.tokens:
        name, role, stored = entry.split(":")
        if hmac.compare_digest(given, stored):
            return name, role
    return None


def role_needed(method, path):
    if method in ("GET", "HEAD", "OPTIONS"):
        return "viewer"
    if any(method == m and path.startswith(p) for m, p in OPERATOR):
        return "operator"
    return "admin"


def allows(role, needed):
    return ROLES.index(role) >= ROLES.index(needed)
