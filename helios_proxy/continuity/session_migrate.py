"""Session migrate: a session-pooled client's state, read from one server connection and re-created
on another (the spec's session_migrate). Used by the planned switchover (frontend/session.py
move_off: an idle client moves to the new primary) and by failover replay (continuity/replay.py: the
state is read after each transaction that changed it, as the old server cannot be asked after it
died).

The state: session settings (pool/session_state.py, the code every pooled lease applies them with)
and prepared statements, protocol- and SQL-level (pool/prepared.py). Temporary tables, LISTEN,
WITH HOLD cursors and session advisory locks cannot be re-created elsewhere: `stateful` counts
them, and a session holding any does not move.
"""
from ..pool import prepared, session_state
from ..protocol import codec


class Snapshot:
    """A session's state as read from its server."""
    __slots__ = ("settings", "statements", "stateful")

    def __init__(self, settings, statements=(), stateful=0):
        self.settings = settings            # {name: value}, as session_state.apply takes them
        self.statements = list(statements)  # rows of prepared.SAVED_STATEMENTS
        self.stateful = stateful            # temp tables, LISTEN, WITH HOLD cursors, advisory locks


def capture(server):
    """The session state on server (idle, nothing owed); raises BackendError."""
    stateful = int(server.execute(session_state.STATEFUL)[0][0])
    settings = session_state.capture(server)
    statements = [tuple(row) for row in server.execute(prepared.SAVED_STATEMENTS) or ()]
    return Snapshot(settings, statements, stateful)


def prove(session, server):
    """helios.tenant() proven for this backend (tenancy/proof.py), after the settings."""
    if session.identity.tenant is not None:
        session.proxy.tenants.establish(server, session.identity.tenant)


def restore(session, server, snapshot, skip=()):
    """Re-create on server (fresh from a pool) the session's state: a session-pooled client's
    snapshot, or a pooled client's settings and statements; statements named in skip are left
    out (the caller parses them itself). Raises BackendError."""
    server.execute("DEALLOCATE ALL")  # (a pooled connection may hold other clients' statements)
    server.statements.clear()
    if snapshot is not None:
        session_state.apply(server, snapshot.settings)
        prove(session, server)
        prepared.recreate(server, [row for row in snapshot.statements if row[0] not in skip])
        return
    session_state.apply(server, session.settings.values, session.settings.key)
    prove(session, server)
    for stmt in session.statements.by_name.values():  # protocol-level, under the server's names
        if stmt.server_name not in skip:
            server.sock.sendall(stmt.parse + codec.SYNC)
            server._results()
            server.statements.add(stmt.server_name)
    for stmt in session.statements.sql.values():  # SQL-level: their PREPARE
        if stmt.server_name not in skip:
            server.execute(stmt.parse)
            server.statements.add(stmt.server_name)
    for name in skip:
        server.statements.add(name)
