"""The pipeline's part of the client-to-server direction: the stages run on a Query or Parse
(decoded straight from the client's buffer), and their decisions (pipeline/context.py Decisions)
applied in one place, each to the part of the session that owns it (route, settings, statements,
lease slot, journal) or to the forwarder's next steps (a COMMIT's xid, a cache fill, a batch)."""
from .. import pipeline
from ..backend.statements import invalidate_all
from ..errors import ProtocolViolation
from ..pipeline.context import UNDECIDED
from ..pipeline.stage import Action
from ..protocol import codec, messages as m

Q = m.QUERY[0]
LET_THROUGH = ("let through",)  # a premade decision: every stage lets this text through (fastpath.py)


class Answer:
    """A stage's answer to a Parse: what its statement's executions return (forward_local.py)."""
    __slots__ = ("sql", "payload")

    def __init__(self, sql, payload):
        self.sql, self.payload = sql, payload


def run(fwd, mtype, data, begin, end):
    """Run the stages on the Query or Parse in data[begin:end]: (True, None) forward as is,
    (True, message) forward a rewritten message, (False, payload) the proxy answers it (a Parse:
    an error, or the Answer its statement's executions get, forward_local.py). The
    text is decoded straight from the buffer: a large query is copied once, not four times.
    A Query or Parse the fast path decided on already (fastpath.py) is not decided again."""
    session = fwd.session
    premade = fwd.premade
    if premade is not None:
        fwd.premade = None
        if premade is LET_THROUGH:
            return True, None
        ctx, result, sql, name, rest = premade
        return outcome(mtype, ctx, result, sql, name, rest)
    idle = session.slot.idle
    if not idle.is_set():  # stages see the state the ending lease leaves behind
        idle.wait()        # (settings, read-your-writes position)
    body = begin + 5
    if mtype == Q:
        name, rest, text_at, nul = "", b"", body, data.find(0, body, end)
        if nul != end - 1:
            raise ProtocolViolation("invalid message format")
    else:
        name_end = data.index(0, body, end)
        name = data[body:name_end].decode("utf-8", "replace")
        text_at, nul = name_end + 1, data.index(0, name_end + 1, end)
        rest = bytes(data[nul + 1:end])
    with memoryview(data) as view:
        sql = str(view[text_at:nul], "utf-8", "replace")
    size = nul - text_at
    ctx = pipeline.QueryContext(session, sql, "simple" if mtype == Q else "extended", name, size,
                                size > session.proxy.config.pipeline.max_parse_bytes)
    return outcome(mtype, ctx, decide(fwd, ctx, name), sql, name, rest)


def decide(fwd, ctx, name="", stages=None):
    """The stages' result for ctx; their decisions applied, its completion noted (analytics, plugins).
    stages: a part of them (the fast path's, for a text the others let through already)."""
    session = fwd.session
    result = pipeline.run(session.proxy.stages if stages is None else stages, ctx)
    if ctx.decided is not None:
        apply(fwd, ctx.decided)
    if session.plan.completions is not None:  # plugins' on_query_complete, analytics
        if result.action is Action.CONTINUE:
            if name:  # a named statement: each Bind of it is an execution (executes_named)
                session.statements.queries[name] = ctx
            else:
                session.plan.report(ctx)  # reported at the ReadyForQuery of its Query or Sync
        else:
            fwd.completion_steps.answered_here(ctx, result)
    return result


def outcome(mtype, ctx, result, sql, name, rest):
    """What the forwarder does with the query: see run()."""
    if result.action is Action.CONTINUE:
        if ctx.sql is sql:
            return True, None
        if mtype == Q:
            return True, codec.query(ctx.sql)
        return True, codec.message(m.PARSE, codec.cstr(name) + codec.cstr(ctx.sql) + rest)
    if result.action is Action.REJECT:
        return False, codec.error_response(result.sqlstate, result.message)
    if mtype == Q:
        return False, result.payload
    return False, Answer(sql, result.payload)  # (a Parse: the statement the proxy answers, forward_local.py)


def apply(fwd, decided):
    """The stages' decisions about the session (pipeline/context.py Decisions), in one place."""
    session = fwd.session
    route = session.route
    if decided.target is not None:
        route.aim(decided.target, decided.lag, decided.tables)
    if decided.route_override is not UNDECIDED:
        route.route_later(decided.route_override)
    if decided.statement_target is not None:
        route.aim_statement(*decided.statement_target)
    if decided.read_after is not None:
        route.read_after(decided.read_after)
    if decided.pin:
        session.slot.pin(decided.pin)
    if decided.settings_changed:
        session.settings.changed()
    if decided.discard:
        session.statements.discard()
    if decided.schema_changed:  # re-parsed on every connection before their next use (now, and at lease end)
        invalidate_all()
        session.statements.schema_change()
    if decided.commits is not None:
        fwd.commit = decided.commits
    elif decided.autocommit_write:
        fwd.commit = "write"
    if decided.state_changed:
        session.journal.note_change()
    if decided.cache is not None:
        fwd.cache_steps.next = decided.cache
    if decided.batch is not None:
        fwd.batch_steps.next = decided.batch
    fwd.sql_prepare, fwd.sql_needs = decided.sql_prepare, decided.sql_needs
