"""Session settings a client expects (its startup parameters and its own SETs), applied to whichever
server connection serves it: at login, and in transaction/statement pooling at every new lease.

A server connection remembers whose settings it carries (`settings_key`), so a client that gets the
same connection back, or one with identical settings, costs no query.
"""
CAPTURE = "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'"


def literal(value):
    """A string literal safe under any standard_conforming_strings setting."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def settings_key(settings):
    return tuple(sorted(settings.items()))


def apply(server, settings, key=None):
    """Make the server's session settings exactly `settings` ({name: value}); raises BackendError."""
    key = settings_key(settings) if key is None else key
    if server.settings_key == key:
        return
    statements = ["RESET ALL"] if server.settings_key else []
    if settings:
        statements.append("SELECT " + ", ".join(f"pg_catalog.set_config({literal(k)}, {literal(v)}, false)"
                                                for k, v in settings.items()))
    server.settings_key = None  # unknown until the query succeeds
    server.execute("; ".join(statements))
    server.settings_key = key


def capture(server):
    """The settings the client left on the server: {name: value} of every session-level setting."""
    rows = server.execute(CAPTURE)
    settings = {name: value for name, value in rows}
    server.settings_key = settings_key(settings)
    return settings
