"""Named prepared statements in pooled modes: a client's names become the server's names.

A client's statement is known under a name derived from its text (pool/prepared.py); each server
connection holds the statements it was given (backend/statements.py). These functions turn a
client's Parse, Bind, Describe, Close, PREPARE or EXECUTE into the bytes its leased server needs
(a hidden Parse first when that server lacks the statement; hidden Closes when its cap evicts
others), note the answers the server will owe in the session's response plan, and return any
answer the proxy gives itself; the forwarder sends both. They raise ProxyError as PostgreSQL
would (42P05, 26000).
"""
from ..pool import prepared
from ..pipeline.stages.sql_prepare import PREPARE_DONE
from ..protocol import codec
from . import plan as p

P, B = ord("P"), ord("B")
STATEMENT = ord("S")
NEEDS_SERVER = object()  # answer_locally(): a server is needed after all


def answer_locally(session, mtype, message):
    """A named Parse of a statement the pool already knows to be valid, or a Close of a statement,
    answered without a server: the answer for the client now (None: queued in the plan), or
    NEEDS_SERVER."""
    body = message[5:]
    if mtype == P:
        if body[0] == 0:
            return NEEDS_SERVER
        name, stmt = session.statements.parse(body)
        if stmt.server_name not in session.slot.pool.known_statements:
            session.statements.forget(name)  # translate() registers it again with the server
            return NEEDS_SERVER
        stmt.route = session.route.route_of(name, session.route.next_target)
        return session.plan.fake(prepared.PARSE_COMPLETE)
    if body[0] != STATEMENT or body[1] == 0:
        return NEEDS_SERVER
    session.statements.forget(codec.read_cstr(body, 1)[0])  # the server keeps it for others
    return session.plan.fake(prepared.CLOSE_COMPLETE)


def translate(session, mtype, message):
    """(bytes for the server, answer for the client now or None) instead of a Parse/Bind/Describe
    naming a statement; None when the message names no statement."""
    body = message[5:]
    plan, server, known = session.plan, session.server, session.slot.pool.known_statements
    if mtype == P:
        if body[0] == 0:
            return None
        name, stmt = session.statements.parse(body)
        stmt.route = session.route.route_of(name, (session.slot.lease.target, None))
        known[stmt.server_name] = True
        if stmt.server_name in server.statements:  # valid for the server, not yet for the pool
            return b"", plan.fake(prepared.PARSE_COMPLETE)
        out = make_room(session, stmt.server_name)

        def failed(name=name, sname=stmt.server_name, server=server):
            session.statements.forget(name)
            server.statements.discard(sname)
            known.pop(sname, None)
        plan.expect(p.ONE, on_fail=failed)
        return out + stmt.parse, None
    if mtype == B:
        portal, name, params = bind_names(body)
        if not name:
            return None
        return bind(session, server, session.statements.lookup(name), body[:portal], body[params:]), None
    if body[0] != STATEMENT or body[1] == 0:
        return None
    stmt = session.statements.lookup(codec.read_cstr(body, 1)[0])
    out = ensure(session, stmt, server)
    plan.expect(p.DESCRIBE_STATEMENT)
    return out + prepared.describe_statement(stmt.server_name), None


def bind_names(body):
    """(where a Bind's body names its statement, the statement's name, where its parameters begin);
    a DECODING_ERRORS error for a body that is not one."""
    pos = body.index(0) + 1  # (after the portal's name)
    name, params = codec.read_cstr(body, pos)
    return pos, name, params


def bind(session, server, stmt, portal, params):
    """What server gets for a client's Bind of stmt (portal: its portal's name with the NUL; params:
    the rest of its body as it came): the Bind of the server's statement, after a Parse when server
    lacks it; the plan expects its answer."""
    if stmt.sets:
        session.settings.changed()
    out = ensure(session, stmt, server)
    session.plan.expect(p.ONE)
    return out + prepared.bind(portal, stmt, params)


def sql_statements(session, prepare, needs):
    """For a Query the sql_prepare stage rewrote (PREPARE, or EXECUTE of `needs`): (the proxy's
    answer when the server has the statement already, else None; bytes to send before the Query;
    on_fail for its plan entry)."""
    server, plan, known = session.server, session.plan, session.slot.pool.known_statements
    if prepare is not None:
        name, stmt = prepare
        if stmt.server_name in server.statements:
            return plan.fake(PREPARE_DONE, p.READY_NOW) or b"", b"", None
        prefix = make_room(session, stmt.server_name)
        known[stmt.server_name] = True

        def failed(name=name, sname=stmt.server_name):
            session.statements.forget(name)
            server.statements.discard(sname)
            known.pop(sname, None)
        return None, prefix, failed
    prefix = b""
    for stmt in needs:
        if stmt.server_name in server.statements:
            continue
        prefix += make_room(session, stmt.server_name)
        # PREPARE through the unnamed statement, all of it hidden from the client
        server.unnamed_owner = None
        prefix += codec.parse(stmt.parse) + codec.bind([]) + codec.execute() + codec.SYNC
        plan.expect(p.ONE, drop=True)
        plan.expect(p.ONE, drop=True)
        plan.expect(p.EXECUTE, drop=True, on_fail=lambda s=stmt.server_name: server.statements.discard(s))
        plan.expect(p.SYNC, drop=True)
        plan.sent(ord("S"))
    return None, prefix, None


def route_of_bind(session, body):
    """Send a Bind of a named statement where the statement's Parse was routed, or where SET
    helios.route says now (a statement prepared before it, as psycopg 3 prepares a query it ran
    five times, follows it as its text would)."""
    name = bind_names(body)[1]
    stmt = session.statements.by_name.get(name) if name else None
    if stmt is not None:
        aim_at(session, stmt)


def aim_at(session, stmt):
    """The next lease goes where stmt's Parse went, or where SET helios.route says now."""
    override = session.route.override
    session.route.aim(stmt.route if override is None else (override, None))


def ensure(session, stmt, server):
    """A Parse (answered invisibly) when server (the leased one) lacks stmt, else nothing."""
    if stmt.server_name in server.statements:
        return b""
    out = make_room(session, stmt.server_name)
    session.plan.expect(p.ONE, drop=True, on_fail=lambda: server.statements.discard(stmt.server_name))
    return out + stmt.parse


def make_room(session, sname):
    """Record sname on the server; Close (invisibly) what the LRU cap evicts."""
    out = b""
    for evicted in session.server.statements.add(sname):
        session.plan.expect(p.ONE, drop=True)
        out += prepared.close_statement(evicted)
    return out
