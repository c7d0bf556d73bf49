"""The response plan: what the client expects back, in order, and what the proxy changes in it.

The session appends one entry per forwarded request message (the server answers each in order)
and one FAKE entry per answer the proxy gives itself (a refused query, a ParseComplete for a
statement the server already has). The pump feeds every server message through `on_message`,
which says whether to drop it and which proxy answers to emit right after it. Extended-protocol
errors make the server skip to Sync; the plan skips the same entries (its fakes are not sent, as
PostgreSQL would not send them either).
"""
from collections import deque

from ..protocol import codec, messages as m

QUERY, SYNC, ONE, DESCRIBE_STATEMENT, DESCRIBE_PORTAL, EXECUTE, FAKE, HIDDEN = range(8)
# Request message type -> entry kind (Describe is decided by its first byte).
KIND = {ord("Q"): QUERY, ord("F"): QUERY, ord("S"): SYNC, ord("P"): ONE, ord("B"): ONE, ord("C"): ONE,
        ord("E"): EXECUTE}
ENDS = {ONE: frozenset(b"123"), DESCRIBE_STATEMENT: frozenset(b"Tn"), DESCRIBE_PORTAL: frozenset(b"Tn"),
        EXECUTE: frozenset(b"CIs"), SYNC: frozenset(b"Z"), QUERY: frozenset(b"Z")}
ASYNC = frozenset(b"NAS")  # NoticeResponse, NotificationResponse, ParameterStatus: anywhere
ERROR, READY, DATA_ROW = ord("E"), ord("Z"), ord("D")
DESCRIBE, STATEMENT = ord("D"), ord("S")
HIDE = 2  # on_message's drop for the answer to the proxy's own Query (truthy; told from other drops)
READY_NOW = object()  # in a FAKE payload list: a ReadyForQuery with the status of that moment
FAILED_NOW = object()  # ... a ReadyForQuery of a failed transaction block (the proxy's error failed it)
AS_IS = (False, b"")  # on_message's usual answer: forward the message, add nothing


class Entry:
    __slots__ = ("kind", "drop", "payload", "on_fail")

    def __init__(self, kind, drop=False, payload=None, on_fail=None):
        self.kind, self.drop, self.payload, self.on_fail = kind, drop, payload, on_fail


# The usual entry (forward the answer, nothing to run on failure) never changes: one per kind is
# shared by every plan, saving an object per request message.
PLAIN = {kind: Entry(kind) for kind in (QUERY, SYNC, ONE, DESCRIBE_STATEMENT, DESCRIBE_PORTAL, EXECUTE)}
PLAIN_FOR = {mtype: PLAIN[kind] for mtype, kind in KIND.items()}  # request message type -> its entry
QUERY_ENTRY = PLAIN[QUERY]


def entry_for(mtype, data, begin):
    """The entry of a request message in data[begin:] the server answers as usual (None: it answers
    nothing, e.g. Flush); a Describe's kind is told by its first byte."""
    entry = PLAIN_FOR.get(mtype)
    if entry is None and mtype == DESCRIBE:
        entry = PLAIN[DESCRIBE_STATEMENT if data[begin + 5] == STATEMENT else DESCRIBE_PORTAL]
    return entry


SENDS_READY = frozenset(b"QSF")  # Query, Sync, FunctionCall: each gets one ReadyForQuery


class ResponsePlan:
    """Everything the server still owes the client, in one place: the entries, the ReadyForQuery
    count, an unsynced extended batch, and (plugins' on_query_complete) the query of each
    ReadyForQuery to come."""
    __slots__ = ("entries", "skipping", "status", "outstanding", "in_extended", "completions", "pending_ctx",
                 "hidden", "streaming")

    def __init__(self, completions=False):
        self.entries = deque()
        self.skipping = False   # an extended-protocol error: the server answers nothing until Sync
        self.status = b"I"      # transaction status of the last ReadyForQuery
        self.outstanding = 0    # Query/Sync/FunctionCall sent, ReadyForQuery not yet seen
        self.in_extended = False  # extended-protocol messages sent since the last Sync
        self.completions = deque() if completions else None  # query context per ReadyForQuery to come
        self.pending_ctx = None   # the query whose Sync has not been sent yet
        self.hidden = 0           # the proxy's own Queries not answered yet (their rows must be seen)
        self.streaming = False    # a large CopyData is still being streamed to the server (forward_stream.py)

    def stream_begins(self):
        """A large CopyData is being streamed to the server: the lease cannot end before its last byte."""
        self.streaming = True

    def stream_ends(self):
        self.streaming = False

    def own_ready(self):
        """The ReadyForQuery of a Sync or Query the proxy added was seen (not the client's)."""
        self.outstanding -= 1

    def report(self, ctx):
        """ctx's completion is reported at the ReadyForQuery of its Query or Sync (plugins, analytics)."""
        self.pending_ctx = ctx

    def __bool__(self):
        return bool(self.entries)

    def owes(self):
        """Whether the server still owes the client anything."""
        return bool(self.outstanding or self.in_extended or self.entries)

    def sent(self, mtype):
        """A request message went to the server (its answers are counted, not its entry)."""
        if mtype in SENDS_READY:
            self.outstanding += 1
            self.in_extended = False
            if self.completions is not None:  # one entry per ReadyForQuery the server will send
                self.completions.append(self.pending_ctx)
                self.pending_ctx = None
        elif mtype in m.EXTENDED:  # extended-protocol messages: answered at the next Sync
            self.in_extended = True

    def sent_query(self):
        """sent_request() of a simple Query (one entry: an append, no iterator over a tuple)."""
        self.entries.append(QUERY_ENTRY)
        self.outstanding += 1
        self.in_extended = False
        if self.completions is not None:
            self.completions.append(self.pending_ctx)
            self.pending_ctx = None

    def sent_request(self, entries):
        """A Query, or an extended batch up to its Sync, went to the server; entries: its messages'
        (what an entry and sent() for each message come to, in one call)."""
        self.entries.extend(entries)
        self.outstanding += 1
        self.in_extended = False
        if self.completions is not None:
            self.completions.append(self.pending_ctx)
            self.pending_ctx = None

    def answered(self):
        """A ReadyForQuery came: the query context it completes (None if none is tracked)."""
        self.outstanding -= 1
        return self.completions.popleft() if self.completions else None

    def expect(self, kind, drop=False, on_fail=None):
        self.entries.append(Entry(kind, drop, on_fail=on_fail) if drop or on_fail else PLAIN[kind])

    def expect_hidden(self, on_row=None, final=False):
        """The proxy sends a Query of its own: its answer is cut out of the client's stream,
        on_row(DataRow body) gets its row and on_row(None) an error. final: its ReadyForQuery is
        the client's (the COMMIT closing an autocommit write the proxy wrapped, replay.py)."""
        self.entries.append(Entry(HIDDEN, final, on_fail=on_row))
        self.outstanding += 1
        self.hidden += 1

    def expect_ready_hidden(self, kind=QUERY):
        """A client's Query (or Sync) whose ReadyForQuery is cut (a final hidden Query gives it later)."""
        self.entries.append(Entry(kind, HIDE))

    def forget_hidden(self):
        """The server that owed hidden answers is gone (continuity/replay.py). A client request whose
        ReadyForQuery was to be cut gets it again as usual (the replay sends it), and then the
        final hidden Query no longer owes the client one."""
        entries = list(self.entries)
        waiting = any(e.drop is HIDE and e.kind != HIDDEN for e in entries)
        kept = []
        for e in entries:
            if e.kind == HIDDEN:
                if not e.drop or waiting:  # (a final one counts for the client's own, if still owed)
                    self.outstanding -= 1
            elif e.drop is HIDE:
                kept.append(PLAIN[e.kind])
            else:
                kept.append(e)
        self.entries.clear()
        self.entries.extend(kept)
        self.hidden = 0

    def fake(self, *payload):
        """Queue a proxy answer; returns it at once (bytes) when nothing is pending before it."""
        if not self.entries:
            return self._render(payload)
        self.entries.append(Entry(FAKE, payload=payload))
        return None

    def _render(self, payload):
        if len(payload) == 2 and payload[1] is READY_NOW:  # (an answer and its ReadyForQuery: the usual)
            return payload[0] + codec.ready_for_query(self.status)
        if payload[-1] is FAILED_NOW:
            self.status = m.TX_FAILED
        out = []  # (a loop, not a generator: join() would make a list of it anyway)
        for p in payload:
            out.append(codec.ready_for_query(self.status) if p is READY_NOW or p is FAILED_NOW else p)
        return b"".join(out)

    def on_message(self, mtype, body):
        """(drop this message?, bytes to send right after it) for one server message."""
        entries = self.entries
        if not entries or mtype in ASYNC:
            if mtype == READY:
                self.status = body
            return AS_IS
        head = entries[0]
        if head.kind == HIDDEN:
            return self._hidden(head, mtype, body)
        if mtype == READY:
            self.status = body
            if self.skipping:
                return self._skip_to_sync(), self._fakes()
        if self.skipping:
            return AS_IS
        kind = head.kind
        if mtype == ERROR and kind == QUERY and head.on_fail:
            head.on_fail()  # a simple query goes on to its ReadyForQuery; only note the failure
            head.on_fail = None
        if mtype == ERROR and kind != QUERY and kind != SYNC:
            entries.popleft()  # this request failed; the server now skips to Sync
            if head.on_fail:
                head.on_fail()
            self.skipping = True
            return AS_IS
        if mtype not in ENDS[kind]:
            return AS_IS  # rows, ParameterDescription, copy messages... of the head entry
        entries.popleft()
        if not head.drop and (not entries or entries[0].kind != FAKE):
            return AS_IS
        return head.drop, self._fakes()

    def _hidden(self, head, mtype, body):
        if mtype == DATA_ROW or mtype == ERROR:
            if head.on_fail is not None:
                head.on_fail(body if mtype == DATA_ROW else None)
        elif mtype == READY:
            self.entries.popleft()
            self.hidden -= 1
            if head.drop:  # (the client's, from now on)
                self.status = body
            return (False if head.drop else HIDE), self._fakes()
        return HIDE, b""

    def _skip_to_sync(self):
        """The server skipped every entry up to the Sync whose ReadyForQuery just came; returns
        whether to drop that ReadyForQuery."""
        self.skipping = False
        entries = self.entries
        while entries:
            entry = entries.popleft()
            if entry.kind == SYNC:
                return entry.drop  # the proxy's own Sync: its ReadyForQuery is not the client's
            if entry.on_fail:
                entry.on_fail()
        return False

    def _fakes(self):
        out = []
        entries = self.entries
        while entries and entries[0].kind == FAKE:
            out.append(self._render(entries.popleft().payload))
        return b"".join(out)
