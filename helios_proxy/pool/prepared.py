"""Protocol-level named prepared statements under transaction/statement pooling.

A client's statement names are its own; on the server each statement gets a name derived from its
text and parameter types, so clients that prepare the same query share one server-side statement.
Each server connection remembers which statements it has (an LRU, capped by
`pool.prepared_statements_cap`); a client's Bind or Describe on a connection that lacks the
statement is preceded by a Parse the client never sees. The response plan (frontend/plan.py) hides
the replies to those extra messages and answers the client's own Parse/Close where the server was
not asked.
"""
import hashlib
import re

from ..errors import (
    DUPLICATE_PREPARED_STATEMENT as DUPLICATE_PREPARED, INVALID_SQL_STATEMENT_NAME as UNDEFINED_PREPARED, ProxyError)
from ..protocol import codec
from ..protocol.codec import read_cstr
from ..protocol.framing import INT32



# A statement that may change session settings each time it runs (SET, set_config(), DO, CALL):
# its executions make the session capture its settings at the end of the lease. The keyword must
# begin the statement (a Parse's text follows its name's NUL; comments may come first): UPDATE ...
# SET, ON CONFLICT DO UPDATE are not (each run of a prepared UPDATE cost a read-back of the settings).
SETS = re.compile(rb"set_config|(?:^|\0)(?:\s|/\*.*?\*/|--[^\n]*\n)*(?:set|reset|discard|do|call)\s", re.I | re.S)


class Statement:
    __slots__ = ("server_name", "parse", "route", "sets", "cname")

    def __init__(self, server_name, parse):
        self.server_name, self.parse = server_name, parse  # parse: a whole Parse message, server name
        self.cname = codec.cstr(server_name)  # (its name as a Bind or Describe carries it)
        self.route = None  # where a lease for executing it goes (set by the route stage at Parse)
        self.sets = SETS.search(parse if isinstance(parse, bytes) else parse.encode()) is not None


def server_name(rest):
    """A server-side name from the query text and parameter types (the Parse body after its name)."""
    return "helios_" + hashlib.blake2b(rest, digest_size=12).hexdigest()


class StatementBook:
    """Every prepared-statement fact of one client (a session's part): the statements it prepared,
    by its names, protocol-level (Parse) and SQL-level (PREPARE), which share one namespace as in
    PostgreSQL; its unnamed statement; the texts a fingerprint limit needs; the query contexts its
    named statements report completions with; whether the next server must drop its statements
    (DISCARD ALL / DEALLOCATE ALL) or re-parse shared ones (DDL)."""
    __slots__ = ("by_name", "sql", "unnamed", "texts", "queries", "discard_pending", "schema_changed", "local")

    def __init__(self):
        self.by_name = {}
        self.sql = {}  # SQL-level: Statement.parse holds the server's PREPARE text
        self.unnamed = None  # the client's unnamed statement: its last unnamed Parse as sent (frontend/unnamed.py)
        self.texts = None    # limits/admission.Texts: statement and portal texts, while a limit is keyed by fingerprint
        self.queries = {}    # (completions on) a named statement's Parse QueryContext: each Bind reports with it
        self.discard_pending = False  # it sent DISCARD ALL / DEALLOCATE ALL: the next server drops its statements
        self.schema_changed = False   # it ran DDL: shared statements are re-parsed after its transaction
        self.local = None    # frontend/forward_local.LocalStatements: statements the proxy answers (none yet)

    def check_free(self, name):
        if name in self.by_name or name in self.sql or self.local is not None and name in self.local.statements:
            raise ProxyError(f'prepared statement "{name}" already exists', sqlstate=DUPLICATE_PREPARED)

    def add_sql(self, name, stmt):
        self.check_free(name)
        self.sql[name] = stmt
        return stmt

    def lookup_sql(self, name):
        return self.sql.get(name) or _undefined(name)

    def deallocate(self, name):
        if (self.by_name.pop(name, None) is None and self.sql.pop(name, None) is None
                and (self.local is None or self.local.statements.pop(name, None) is None)):
            _undefined(name)

    def parse(self, body):
        """Register a named Parse; returns (client name, Statement). Raises ProxyError 42P05."""
        name, pos = read_cstr(body, 0)
        self.check_free(name)
        rest = bytes(body[pos:])
        sname = server_name(rest)
        stmt = Statement(sname, codec.message(b"P", codec.cstr(sname) + rest))
        self.by_name[name] = stmt
        return name, stmt

    def lookup(self, name):
        return self.by_name.get(name) or _undefined(name)

    def forget(self, name):
        """The server side of name is gone or not made (a failed Parse, a Close answered here)."""
        self.by_name.pop(name, None)
        self.sql.pop(name, None)

    def closed(self, name):
        """The client closed statement name: its completions' query goes too."""
        self.queries.pop(name, None)

    def clear(self):
        self.by_name.clear()
        self.sql.clear()
        self.queries.clear()
        self.local = None

    def texts_of(self, make):
        """The statement and portal texts a fingerprint limit keys by, made by make() at first use."""
        texts = self.texts
        if texts is None:
            texts = self.texts = make()
        return texts

    def schema_change(self):
        """The client ran DDL: shared statements are re-parsed after its transaction."""
        self.schema_changed = True

    def take_schema_change(self):
        """Whether DDL ran since the last call (the lease's end)."""
        changed, self.schema_changed = self.schema_changed, False
        return changed

    def discarded(self):
        """The next server dropped its statements (DISCARD ALL / DEALLOCATE ALL reached it)."""
        self.discard_pending = False

    def discard(self):
        """DISCARD ALL / DEALLOCATE ALL went to the server: none left, and the next server drops its own."""
        self.clear()
        self.discard_pending = True


def _undefined(name):
    raise ProxyError(f'prepared statement "{name}" does not exist', sqlstate=UNDEFINED_PREPARED)


# A session's own prepared statements (session pooling), to re-create them on another connection:
# protocol-level ones by Parse (name, text, parameter type OIDs), SQL-level ones by their PREPARE.
SAVED_STATEMENTS = ("SELECT name, statement, from_sql, pg_catalog.array_to_string(parameter_types::oid[], ',') "
                    "FROM pg_catalog.pg_prepared_statements")


def recreate(server, saved):
    """Prepare every statement of saved (rows of SAVED_STATEMENTS) on server; raises BackendError."""
    for name, text, from_sql, types in saved:
        if from_sql == "t":
            server.execute(text)
        else:
            server.prepare(name, text, [int(t) for t in types.split(",") if t])


def bind(portal, stmt, params):
    """A Bind of stmt's server-side statement: portal (its name and NUL) and params (the client's
    Bind body after the statement's name) as the client sent them."""
    return b"B" + INT32.pack(4 + len(portal) + len(stmt.cname) + len(params)) + portal + stmt.cname + params


def describe_statement(sname):
    return codec.message(b"D", b"S" + codec.cstr(sname))


def close_statement(sname):
    return codec.message(b"C", b"S" + codec.cstr(sname))


PARSE_COMPLETE = codec.message(b"1")
CLOSE_COMPLETE = codec.message(b"3")
