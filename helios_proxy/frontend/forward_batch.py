"""The forwarder's batch steps (batch/): a single-row INSERT sent in the extended protocol, as
drivers send one query (unnamed Parse, Bind of the unnamed portal, [Describe], Execute, Sync, all
received), is coalesced like a simple one. Its text parameters become literals in the row (an
untyped literal, as an INSERT column takes it); the client gets ParseComplete, BindComplete, its
Describe's answer, its row and tag (or its own error) and ReadyForQuery, only after the commit.
Binary parameters of the usual types (bool, integers, floats, text, uuid) are read back as
text; other binary parameters, binary results, a parameter used inside an expression, a named
statement: not batched (the usual path)."""
import uuid
from time import monotonic
from struct import error as struct_error, unpack

from pglast.parser import ParseError, scan

from ..batch import Batches
from ..cache import extended
from ..pipeline.stage import StageResult
from ..protocol import codec, messages as m

PARSED_BOUND = codec.message(m.PARSE_COMPLETE) + codec.message(m.BIND_COMPLETE)
NO_DATA = codec.message(m.NO_DATA)
NOT_TEXT = object()


def literal(value):
    """A text parameter as an untyped SQL literal (standard_conforming_strings: only ' doubles)."""
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


# Binary parameters of these types (by OID) read back as text: what drivers send binary by default.
BINARY = {16: lambda b: "true" if b == b"\1" else "false",
          20: lambda b: str(int.from_bytes(b, "big", signed=True)),
          21: lambda b: str(int.from_bytes(b, "big", signed=True)),
          23: lambda b: str(int.from_bytes(b, "big", signed=True)),
          26: lambda b: str(int.from_bytes(b, "big")),
          25: lambda b: b.decode("utf-8"), 1043: lambda b: b.decode("utf-8"),
          700: lambda b: repr(unpack("!f", b)[0]), 701: lambda b: repr(unpack("!d", b)[0]),
          2950: lambda b: str(uuid.UUID(bytes=bytes(b)))}


def text_of(fmt, raw, oid):
    """A parameter's value as text, or NOT_TEXT when it is binary of a type not read here."""
    if raw is None:
        return None
    try:
        if fmt == 0:
            return raw.decode("utf-8")
        read = BINARY.get(oid)
        return NOT_TEXT if read is None else read(raw)
    except (UnicodeDecodeError, ValueError, struct_error):
        return NOT_TEXT


def row_with(row, params, types=()):
    """The row "($1, $2)" with each $n, a bare element, replaced by its literal; None when a
    parameter stands inside an expression, is binary of a type not read here, or is missing."""
    try:
        tokens = scan(row)
    except ParseError:
        return None
    out, at = [], 0
    for i, token in enumerate(tokens):
        if token.name != "PARAM":
            continue
        before, after = tokens[i - 1].name if i else "", tokens[i + 1].name if i + 1 < len(tokens) else ""
        n = int(row[token.start + 1:token.end + 1])
        if before not in ("ASCII_40", "ASCII_44") or after not in ("ASCII_41", "ASCII_44") or not 0 < n <= len(params):
            return None
        fmt, raw = params[n - 1]
        value = text_of(fmt, raw, types[n - 1] if n <= len(types) else 0)
        if value is NOT_TEXT or (value is not None and "\0" in value):
            return None
        out.append(row[at:token.start])
        out.append(literal(value))
        at = token.end + 1
    out.append(row[at:])
    return "".join(out)


class BatchSteps:
    """Asked by the Forwarder (frontend/forward.py) where batching is on; `next`: the Query or Parse
    at hand is an INSERT that may be coalesced (the batch stage's decision: its shape's key)."""
    __slots__ = ("fwd", "next")

    def __init__(self, forwarder):
        self.fwd = forwarder
        self.next = None

    def take(self):
        """The batch stage's decision for the Query or Parse at hand (used up)."""
        key, self.next = self.next, None
        return key

    def batch_query(self, begin, end, replacement):
        """A single-row INSERT in a simple Query the batch stage chose (not rewritten): coalesced
        and answered once its batch committed (True), or left to the usual path (False)."""
        key = self.take()
        if replacement is not None:
            return False
        fwd = self.fwd
        sql = str(fwd.data[begin + 5:end - 1], "utf-8", "replace")
        found = fwd.session.proxy.batches.place(fwd.session, sql, key)
        if found is None:
            return False
        fwd.cut(begin, end)
        row = self.wait(*found)
        self.answer(row.answer, row)
        return True

    def wait(self, batcher, row):
        """Until row's batch committed (or failed, or the client canceled it: Row.set_exception)."""
        slot = self.fwd.session.slot
        slot.wait_on(row)
        try:
            return Batches.wait(batcher, row)
        finally:
            slot.wait_on(None)

    def answer(self, payload, row):
        """The batched query's answer (its rows and tag, or its own error) and a ReadyForQuery;
        its completion reported as any answer the proxy gives (analytics, plugins). As after a
        lease on the primary, the client's later reads see its row (read-your-writes), and the
        statistics count a query, a transaction and its time."""
        fwd = self.fwd
        session = fwd.session
        if row.written is not None:
            session.route.read_after(row.written)
        counters = session.counters
        counters.queries += 1
        counters.transactions += 1
        session.proxy.stats.took.append(monotonic() - row.placed)
        plan = session.plan
        if plan.completions is not None and plan.pending_ctx is not None:
            ctx, plan.pending_ctx = plan.pending_ctx, None
            fwd.completion_steps.answered_here(ctx, StageResult.respond(payload))
        fwd.answer(payload)

    def batch_parse(self, begin, end, replacement):
        """An unnamed Parse the batch stage chose (not rewritten), its whole plain batch received:
        coalesced and answered (True), or left to the usual path (False)."""
        self.take()
        if replacement is not None:
            return False
        session = self.fwd.session
        placed = extended_row(session, self.fwd.data, begin, end)
        if placed is None:
            return False
        batcher, row, sql, describe, sync_end = placed
        admission = session.proxy.admission
        if admission.on:  # its Execute counts before it joins a batch (limits/admission.py)
            refused = admission.take(session, 1, sql)
            if refused is not None:
                self.fwd.cut(begin, sync_end)
                self.fwd.buf.pos = sync_end
                self.fwd.answer(extended_answer(codec.error_response(*refused), describe))
                return True
        row = self.wait(batcher, row)
        answer = row.answer
        if answer is None:
            self.fwd.precounted = admission.on  # (its Execute, on the usual path, was counted here)
            return False
        self.fwd.cut(begin, sync_end)
        self.fwd.buf.pos = sync_end
        self.answer(extended_answer(answer, describe), row)
        return True


def extended_row(session, data, begin, end):
    """For the unnamed Parse in data[begin:end], its whole plain batch after it (Bind of the
    unnamed portal, [Describe], Execute, Sync): (batcher, row, its text, Describe?, end of its
    Sync) when its INSERT joins a batch now, its text parameters the row's literals (batch/); else
    None (a named statement, binary results, a parameter inside an expression...: the usual path)."""
    found = extended.batch(data, end)
    if found is None:
        return None
    bind_begin, bind_end, describe, sync_end = found
    name, sql, types = extended.parse_types(data, begin, end)
    statement, params, results = extended.bind_values(data, bind_begin, bind_end)
    if name or statement or results:
        return None
    placed = session.proxy.batches.extended_row(session, sql, lambda text: row_with(text, params, types))
    return None if placed is None else (*placed, sql, describe, sync_end)


def extended_answer(answer, describe):
    """A simple-protocol answer (batch/) as the extended protocol's: ParseComplete, BindComplete,
    Describe's RowDescription or NoData when asked, then the rows and tag (or the error)."""
    if answer[:1] == m.ERROR_RESPONSE:
        return PARSED_BOUND + answer
    if answer[:1] == m.ROW_DESCRIPTION:
        return PARSED_BOUND + (answer if describe else answer[1 + int.from_bytes(answer[1:5], "big"):])
    return PARSED_BOUND + (NO_DATA if describe else b"") + answer
