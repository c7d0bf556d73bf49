"""The client's unnamed prepared statement, kept as PostgreSQL keeps it whatever the proxy does.

In PostgreSQL the unnamed statement lives until the client's next unnamed Parse or simple Query.
Some clients parse it in one batch and bind it in the next (pg8000's native `run()`), but the
server may no longer hold it by then: the proxy sent a Query of its own in between (replay's
wrap of an autocommit write, its snapshot of session state, a settings read-back, a tenant's
proof), or, in transaction pooling, the Bind's transaction leased another server connection,
where another client's unnamed statement may sit. So each server connection knows whose unnamed
statement it holds (`unnamed_owner`), the session keeps its last unnamed Parse as sent
(`statements.unnamed`), and a Bind or Describe of the unnamed statement on a server that does not
hold the client's gets the Parse again first (its ParseComplete cut), or, when the client has none
(a simple Query destroyed it), a Close of the server's so that the Bind fails as PostgreSQL's
would (26000), never runs another client's statement.
"""
from ..protocol import codec, messages as m
from . import forward_local, plan as p

CLOSE_UNNAMED = codec.message(m.CLOSE, b"S\0")
PARSE, CLOSE = ord("P"), ord("C")


def names_unnamed(mtype, data, begin, end):
    """Whether a Bind or Describe in data[begin:end] uses the unnamed statement."""
    body = begin + 5
    if mtype == ord("D"):
        return data[body] == ord("S") and data[body + 1] == 0
    nul = data.find(0, body, end)  # the end of the portal's name; the statement's follows
    return nul >= 0 and nul + 1 < end and data[nul + 1] == 0


def parsed(session, message):
    """The client's unnamed Parse (as it goes to the server, or refused by the proxy; one the proxy
    answers is its own statement, forward_local.py, registered after this)."""
    book = session.statements
    book.unnamed = message
    if book.local is not None:
        forward_local.forget(book, statement="")


def sent(session, server=None):
    """Its unnamed Parse went to the leased server: that server holds the client's statement."""
    (server if server is not None else session.server).unnamed_owner = session


def destroyed(session):
    """The client's simple Query: PostgreSQL drops the unnamed statement (the server's too, if it goes there)."""
    book = session.statements
    book.unnamed = None
    if book.local is not None:  # (and its portal: the Query ends the transaction it belonged to)
        forward_local.forget(book, statement="", portal="")


def restore(forwarder, session):
    """Before a Bind/Describe of the unnamed statement: make the leased server hold the client's
    own (its Parse again) or none at all. Returns the bytes to send first, or b"" when it holds it."""
    server = session.server
    if server.unnamed_owner is session:
        return b""
    plan = session.plan
    message = session.statements.unnamed
    server.unnamed_owner = session
    plan.expect(p.ONE, drop=True)  # (its ParseComplete, or CloseComplete, is not the client's)
    if message is None:
        plan.sent(CLOSE)
        return CLOSE_UNNAMED
    plan.sent(PARSE)
    return message
