"""The proxy's own answers in the extended protocol: statements a stage answers itself.

Some statements never reach a server: a stage answers them (SET/SHOW helios.*, DEALLOCATE and
PREPARE under pooling, a plugin's rows). In the simple protocol the answer replaces the server's;
in the extended protocol a driver (psycopg 3, asyncpg, JDBC, pgbench -M extended) parses the text,
binds and executes it as separate messages, so the statement lives on as the client's: a
`LocalStatement` under its name ("" for the unnamed one), and a portal bound to it. The proxy then
answers each message as PostgreSQL would: ParseComplete, BindComplete, ParameterDescription and
RowDescription or NoData for a Describe, the rows and CommandComplete (PortalSuspended at a row
limit) for an Execute, CloseComplete, in order with what the server owes (plan.fake).

The stages decide on the Parse (their effect, a route or a DEALLOCATE, happens then, as for a
Query); the first Execute answers with that decision, each later one runs the stages again, as a
Query would, so a prepared `SET helios.route = primary` takes effect each time it runs and a second
`DEALLOCATE p` fails with 26000 at its Execute as in PostgreSQL. Only text results are answered: a
Bind that asks for binary results gets 0A000.

The statements live in the session's StatementBook (`statements.local`, None until the first one:
DEALLOCATE ALL and DISCARD ALL clear them with the others); these steps are asked by the
Forwarder only while there is one.
"""
from .. import pipeline
from ..errors import FEATURE_NOT_SUPPORTED, ProxyError
from ..pipeline.stage import Action
from ..protocol import codec, messages as m
from . import decisions

ROW_DESCRIPTION, DATA_ROW, BIND = m.ROW_DESCRIPTION[0], m.DATA_ROW[0], m.BIND[0]
STATEMENT = ord("S")
PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE = (codec.message(t) for t in (m.PARSE_COMPLETE, m.BIND_COMPLETE,
                                                                             m.CLOSE_COMPLETE))
NO_DATA, SUSPENDED = codec.message(m.NO_DATA), codec.message(m.PORTAL_SUSPENDED)
NO_PARAMETERS = codec.message(m.PARAMETER_DESCRIPTION, b"\0\0")


class LocalStatement:
    __slots__ = ("sql", "description", "rows", "fresh")

    def __init__(self, sql, payload):
        self.sql = sql
        self.description, self.rows = split(payload)
        self.fresh = True  # its Parse's decision not executed yet


class Portal:
    __slots__ = ("statement", "rows")

    def __init__(self, statement):
        self.statement, self.rows = statement, None  # rows: what an Execute stopped at a row limit left


class LocalStatements:
    """A client's statements and portals the proxy answers (StatementBook.local)."""
    __slots__ = ("statements", "portals")

    def __init__(self):
        self.statements, self.portals = {}, {}


def forget(book, statement=None, portal=None):
    """A statement or portal the proxy answered is gone (replaced, closed); none left: local is None."""
    local = book.local
    if statement is not None:
        local.statements.pop(statement, None)
    if portal is not None:
        local.portals.pop(portal, None)
    if not local.statements and not local.portals:
        book.local = None


def split(payload):
    """(RowDescription or b"", the rest: rows, CommandComplete...) of a simple-protocol answer."""
    if payload[:1] == m.ROW_DESCRIPTION:
        end = 1 + int.from_bytes(payload[1:5], "big")
        return payload[:end], payload[end:]
    return b"", payload


def rows_of(payload, limit):
    """(the first `limit` DataRows of payload, the rest) when it holds more; else (payload, None)."""
    pos, n, count = 0, len(payload), 0
    while pos < n and payload[pos] == DATA_ROW:
        if count == limit:
            return payload[:pos], payload[pos:]
        pos += 1 + int.from_bytes(payload[pos + 1:pos + 5], "big")
        count += 1
    return payload, None


class LocalSteps:
    """Asked by the Forwarder (frontend/forward.py) for Parse answers, and for Bind, Describe,
    Execute and Close while the client has a statement the proxy answers."""
    __slots__ = ("fwd",)

    def __init__(self, forwarder):
        self.fwd = forwarder

    def parsed(self, begin, end, answer):
        """A Parse a stage answered (answer: decisions.Answer): the statement is the client's from now on."""
        fwd = self.fwd
        book = fwd.session.statements
        name = codec.read_cstr(fwd.data, begin + 5)[0]
        if name:
            try:
                book.check_free(name)
            except ProxyError as e:  # (42P05: a name in use)
                fwd.refuse(m.PARSE[0], codec.error_from(e))
                return
        local = book.local
        if local is None:
            local = book.local = LocalStatements()
        local.statements[name] = LocalStatement(answer.sql, answer.payload)
        fwd.answer_now(fwd.session.plan.fake(PARSE_COMPLETE))

    def bound(self, begin, end):
        """A Bind: of a statement the proxy answers, answered (True); else its portal is the server's."""
        fwd = self.fwd
        data, local = fwd.data, fwd.session.statements.local
        portal, pos = codec.read_cstr(data, begin + 5)
        name, pos = codec.read_cstr(data, pos)
        statement = local.statements.get(name)
        if statement is None:
            forget(fwd.session.statements, portal=portal)  # (the portal is the server's now)
            return False
        fwd.cut(begin, end)
        if binary_results(data, pos, end):
            fwd.refuse(BIND, codec.error_response(
                FEATURE_NOT_SUPPORTED, f"the proxy answers {statement.sql.strip()[:60]!r} in text format only"))
            return True
        local.portals[portal] = Portal(statement)
        fwd.answer_now(fwd.session.plan.fake(BIND_COMPLETE))
        return True

    def described(self, begin, end):
        """A Describe of a statement or portal the proxy answers: answered (True)."""
        fwd = self.fwd
        data, local = fwd.data, fwd.session.statements.local
        kind, name = data[begin + 5], codec.read_cstr(data, begin + 6)[0]
        if kind == STATEMENT:
            statement, head = local.statements.get(name), NO_PARAMETERS
        else:
            portal, head = local.portals.get(name), b""
            statement = portal and portal.statement
        if statement is None:
            return False
        fwd.cut(begin, end)
        fwd.answer_now(fwd.session.plan.fake(head + (statement.description or NO_DATA)))
        return True

    def executed(self, begin, end):
        """An Execute of a portal the proxy answers: its rows (True)."""
        fwd = self.fwd
        data, local = fwd.data, fwd.session.statements.local
        name, pos = codec.read_cstr(data, begin + 5)
        portal = local.portals.get(name)
        if portal is None:
            return False
        fwd.cut(begin, end)
        rows = portal.rows
        if rows is None:
            rows = self.run(portal.statement)
            if rows is None:
                return True  # (refused: the rest of the batch is skipped to Sync)
        limit = int.from_bytes(data[pos:pos + 4], "big", signed=True)
        rows, portal.rows = rows_of(rows, limit) if limit > 0 else (rows, None)
        fwd.answer_now(fwd.session.plan.fake(rows if portal.rows is None else rows + SUSPENDED))
        return True

    def run(self, statement):
        """The rows of one execution: its Parse's decision the first time, the stages' again after."""
        if statement.fresh:
            statement.fresh = False
            return statement.rows
        fwd = self.fwd
        session = fwd.session
        size = len(statement.sql.encode())
        ctx = pipeline.QueryContext(session, statement.sql, "extended", "", size,
                                    size > session.proxy.config.pipeline.max_parse_bytes)
        result = decisions.decide(fwd, ctx)
        if result.action is Action.RESPOND:
            return split(result.payload)[1]
        if result.action is Action.REJECT:
            fwd.refuse(m.EXECUTE[0], codec.error_response(result.sqlstate, result.message))
        else:  # (the stages let it through now: it was never prepared on a server)
            fwd.refuse(m.EXECUTE[0], codec.error_response(
                FEATURE_NOT_SUPPORTED, "a statement the proxy answered at its Parse must be prepared again"))
        return None

    def closed(self, begin, end):
        """A Close of a statement or portal the proxy answers: answered (True)."""
        fwd = self.fwd
        data, local = fwd.data, fwd.session.statements.local
        kind, name = data[begin + 5], codec.read_cstr(data, begin + 6)[0]
        if name not in (local.statements if kind == STATEMENT else local.portals):
            return False
        if kind == STATEMENT:  # (its portals close with it, as in PostgreSQL)
            statement = local.statements[name]
            for portal in [p for p, bound in local.portals.items() if bound.statement is statement]:
                del local.portals[portal]
        forget(fwd.session.statements, *((name, None) if kind == STATEMENT else (None, name)))
        fwd.cut(begin, end)
        fwd.answer_now(fwd.session.plan.fake(CLOSE_COMPLETE))
        return True


def binary_results(data, pos, end):
    """Whether the Bind whose parameter formats begin at data[pos] asks for any binary result column."""
    count = int.from_bytes(data[pos:pos + 2], "big")
    pos += 2 + 2 * count
    values = int.from_bytes(data[pos:pos + 2], "big")
    pos += 2
    for _ in range(values):
        size = int.from_bytes(data[pos:pos + 4], "big", signed=True)
        pos += 4 + max(size, 0)
    results = int.from_bytes(data[pos:pos + 2], "big")
    return any(data[pos + 2 + 2 * i + 1] for i in range(results)) if pos + 2 + 2 * results <= end else False
