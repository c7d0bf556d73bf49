"""Session settings a client expects (its startup parameters and its own SETs), applied to whichever
server connection serves it: at login, and in transaction/statement pooling at every new lease.

A server connection remembers whose settings it carries (`settings_key`), so a client that gets the
same connection back, or one with identical settings, costs no query.

The identity is part of the settings: `session_authorization` and `role` are hidden from
pg_settings and survive RESET ALL, so they are captured and applied by name (SET SESSION
AUTHORIZATION DEFAULT, which also resets the role, comes before RESET ALL). A pool logs in as one
user, so whatever identity one client reached, the next client of that pool can be given back.
"""
IDENTITY = ("session_authorization", "role")  # applied first, in this order
# Never carried to another connection: a tenant's proof is made for one backend (tenancy/proof.py).
NOT_CARRIED = frozenset({"helios.tenant_proof"})
CAPTURE = ("SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' "
           "UNION ALL SELECT 'session_authorization', pg_catalog.current_setting('session_authorization') "
           "UNION ALL SELECT 'role', pg_catalog.current_setting('role')")
RESET = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL"
# Session state that cannot be re-created elsewhere: LISTEN, temporary tables, open cursors,
# session advisory locks (a count; 0 means the session can move to another connection).
STATEFUL = ("SELECT (SELECT count(*) FROM pg_catalog.pg_listening_channels()) + (SELECT count(*) FROM "
            "pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) + (SELECT count(*) FROM "
            "pg_catalog.pg_cursors) + (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
            "AND pid = pg_catalog.pg_backend_pid())")


def literal(value):
    """A string literal safe under any standard_conforming_strings setting."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


KEYS = {}  # settings_key's: one object per key (most clients' settings are alike), up to KEYS_KEPT
KEYS_KEPT = 4096


def settings_key(settings):
    """The key of settings ({name: value}): equal settings, equal keys; usually the same object, so
    that a pooled transaction's comparison of its server's key with its client's is one `is` (the
    keys made are kept up to KEYS_KEPT, then forgotten: only `==` is exact)."""
    key = tuple(sorted(settings.items()))
    kept = KEYS.get(key)
    if kept is None:
        if len(KEYS) >= KEYS_KEPT:
            KEYS.clear()
        kept = KEYS[key] = key
    return kept


def ordered(settings):
    """settings' items with the identity first: a role is granted to the session user, not before."""
    first = [(k, settings[k]) for k in IDENTITY if k in settings]
    return first + [(k, v) for k, v in settings.items() if k not in IDENTITY]


def apply(server, settings, key=None):
    """Make the server's session settings exactly `settings` ({name: value}); raises BackendError."""
    key = settings_key(settings) if key is None else key
    if server.settings_key == key:
        return
    statements = [RESET] if server.settings_key else []
    if settings:
        statements.append("SELECT " + ", ".join(f"pg_catalog.set_config({literal(k)}, {literal(v)}, false)"
                                                for k, v in ordered(settings)))
    server.settings_key = None  # unknown until the query succeeds
    server.execute("; ".join(statements))
    server.settings_key = key


def capture(server):
    """The settings the client left on the server: {name: value} of every session-level setting,
    and its identity where it differs from the login's."""
    login = server.credentials.user
    settings = {}
    for name, value in server.execute(CAPTURE):
        if name == "role" and value == "none" or name == "session_authorization" and value == login:
            continue
        if name in NOT_CARRIED:
            continue
        settings[name] = value
    server.settings_key = settings_key(settings)
    return settings


class SessionSettings:
    """A client session's settings, the part of the session they own: the values it expects on
    any server connection, their key (compared with a connection's `settings_key`: equal, nothing
    to apply), whether it changed them since (`dirty`: read back at the lease's end), whether its
    startup settings were applied once without error (`checked`), and what its tenant always has
    (`forced`: tenancy/, put over whatever it sets)."""
    __slots__ = ("values", "key", "dirty", "checked", "forced")

    def __init__(self):
        self.values, self.key = {}, ()
        self.dirty = self.checked = False
        self.forced = None

    def set(self, values):
        forced = self.forced
        if forced and any(values.get(k) != v for k, v in forced.items()):
            values = {**values, **forced}
        self.values, self.key = values, settings_key(values)

    def changed(self):
        """Something the client ran may have changed a setting: read back at the lease's end."""
        self.dirty = True

    def read_back(self, values):
        """What a server connection holds after the client's changes (the lease's end)."""
        self.dirty = False
        self.set(values)

    def applied(self):
        """The startup settings went onto a server without error: never checked again."""
        self.checked = True

    def force(self, values):
        """What the client's tenant always has (tenancy/), put over whatever it sets."""
        self.forced = values
