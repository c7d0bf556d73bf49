"""The client-to-server direction of a session: frame the client's messages, run the pipeline on its
queries, lease a server when a transaction starts, have named prepared statements translated
(pooled modes, statements.py), and forward everything else untouched, one send per run of messages.
One handler per message type (HANDLERS).

Each forwarded request gets an entry in the session's response plan (frontend/plan.py), so answers
the proxy gives itself go out in the order the client asked.
"""

import gevent

from ..errors import (DECODING_ERRORS, IDLE_SESSION_TIMEOUT, PROGRAM_LIMIT_EXCEEDED, BackendError, FatalError,
                      ProtocolViolation, ProxyError)
from ..limits import release as release_limits
from ..protocol import codec, messages as m
from ..protocol.framing import MessageBuffer
from ..sockets import recv, recv_later
from ..continuity import replay
from . import decisions, fastpath, plan as p, statements, unnamed
from .forward_batch import BatchSteps
from .forward_cache import CacheSteps
from .forward_complete import CompletionSteps
from .forward_journal import JournalSteps
from .forward_local import LocalSteps
from .forward_stream import StreamSteps, span
from .fastpath import FastPath

Q, P, S, X, F, B, D, C = (t[0] for t in (m.QUERY, m.PARSE, m.SYNC, m.TERMINATE, m.FUNCTION_CALL, m.BIND,
                                         m.DESCRIBE, m.CLOSE))
STATEMENT = ord("S")
EXECUTE = m.EXECUTE[0]


# Every message type a client may send once logged in (PostgreSQL's SocketBackend); any other is a
# protocol violation that ends the session, as in PostgreSQL, and is never forwarded.
VALID = frozenset(b"QPBEFCDHSXdcf")
# Messages forwarded exactly as they come whenever a server is leased: no pipeline, no statement
# names to translate (Query, Parse, Bind, Describe, Close and Terminate take the long way).
PASS = VALID - {Q, P, B, D, C, X}
PASS_COUNTED = PASS - {EXECUTE, F}  # while executions are counted (limits/admission.py)
COPY_MESSAGES = frozenset(b"dcf")  # outside COPY, PostgreSQL ignores them
COPY_DATA = m.COPY_DATA[0]
TX_IN_BLOCK, ERROR_RESPONSE = m.TX_IN_BLOCK, m.ERROR_RESPONSE
FAIL_BLOCK = codec.query(replay.FAIL_BLOCK_SQL)  # (fail_block)


def names_statement(mtype, data, begin, end):
    """Whether a Parse, Bind, Describe or Close in data[begin:end] names a prepared statement (the
    unnamed statement and portals need no translation in pooled modes). A message too short to
    tell says yes: the translation reports it."""
    body = begin + 5
    if end - body < 2:
        return True
    if mtype == P:
        return data[body] != 0
    if mtype == B:
        nul = data.find(0, body, end - 1)  # the end of the portal's name
        return nul < 0 or data[nul + 1] != 0
    return data[body] == STATEMENT and data[body + 1] != 0


FRAME_LIMIT = (1 << 30) - 1  # PostgreSQL's own limit on a message


class IdleTimeout(Exception):
    pass


TERMINATED = object()  # a handler's answer: the client sent Terminate
REFUSED = object()     # a statement step's answer: the proxy refused the message with an error


class Forwarder:
    """The client-to-server direction of one session. The features that take part in it have
    their steps and state in objects of their own (forward_cache.py, forward_batch.py,
    forward_journal.py, forward_complete.py), asked only where their feature is on."""

    def __init__(self, session):
        self.session = session
        self.cache_steps = CacheSteps(self)
        self.batch_steps = BatchSteps(self)
        self.journal_steps = JournalSteps(self)
        self.completion_steps = CompletionSteps(self)
        self.local_steps = LocalSteps(self)
        self.skip_to_sync = False  # a refused extended message: drop messages up to Sync
        self.fail_at_sync = False  # ... refused inside a transaction block: the Sync fails it (fail_block)
        self.stream_steps = StreamSteps(self)  # a large message passed on or dropped as it arrives
        self.sql_prepare = None    # (name, Statement): the Query being forwarded is a PREPARE (Decisions)
        self.sql_needs = ()        # Statements it EXECUTEs: prepared on the server first
        self.data, self.start = None, 0  # forward(): the buffer and the run not yet sent
        self.commit = None         # replay: the Query/Parse at hand is a COMMIT ("lone", "mixed") or a lone write
        self.wrapping = False      # replay: an extended batch wrapped in a transaction of its own, until its Sync
        self.buf = None            # forward(): the MessageBuffer (a cache hit consumes a whole batch)
        self.precounted = False    # the next Execute was counted already (a batch that fell back)
        self.premade = None        # (ctx, result, sql, name, rest) of a Query/Parse the fast path decided on
        self.fast = FastPath(self) if fastpath.enabled(session) else None  # (frontend/fastpath.py)
        limit = session.proxy.config.pipeline.max_query_bytes
        self.max_query = limit + 6 if limit else 1 << 31  # message length with type, length word, NUL

    def run(self):
        """Read the client until it leaves (Terminate or EOF)."""
        session = self.session
        cfg = session.proxy.config.server
        buf = MessageBuffer(FRAME_LIMIT)  # held messages: cfg.max_message_size, checked in forward_stream.py
        sock = session.sock
        try:
            self.serve(buf, sock, cfg)
        finally:
            if self.fast is not None:
                self.fast.close()

    def serve(self, buf, sock, cfg):
        session = self.session
        while True:
            timeout = cfg.client_idle_timeout
            fast = self.fast
            if fast is not None and not buf.pending() and not self.stream_steps.left and fastpath.enabled(session):
                data = self.parked(fast, timeout)  # (the fast path reads the socket meanwhile)
                if data is None:
                    return
            elif timeout and session.plan.outstanding == 0 and (session.server is None
                                                         or session.server.tx_status == m.TX_IDLE):
                try:
                    with gevent.Timeout(timeout, IdleTimeout):
                        data = recv(sock)
                except IdleTimeout:
                    self.idle_timeout()
                    return
            elif session.plan.outstanding and not buf.pending():  # it waits for our answer now
                data = recv_later(sock)
            else:
                data = recv(sock)
            if not data:
                return
            if session.proxy.suspended is not None:  # SUSPEND (admin): nothing goes on until RESUME
                session.proxy.suspended.wait()
            session.counters.bytes_in += len(data)
            if self.stream_steps.left:  # the rest of a large message, streamed to the server or dropped
                data = self.stream_steps.stream(data)
                if not data:
                    continue
            buf.feed(data)
            try:
                if not self.forward(buf):
                    return
            except DECODING_ERRORS as e:  # a truncated Query, Parse, Bind...: 08P01, not a traceback
                raise ProtocolViolation("invalid message format") from e

    def idle_timeout(self):
        self.session.terminate("terminating connection due to idle-session timeout", sqlstate=IDLE_SESSION_TIMEOUT)

    def parked(self, fast, timeout):
        """The client's next bytes the fast path did not take; None once the session ended for
        being idle (client_idle_timeout: requests the fast path served meanwhile are not idleness)."""
        session = self.session
        while True:
            if not timeout:
                return fast.park()
            hits = session.counters.fast_hits  # (requests the fast path takes while the greenlet waits)
            try:
                with gevent.Timeout(timeout, IdleTimeout):
                    return fast.park()
            except IdleTimeout:
                server = session.server
                if (session.counters.fast_hits != hits or fast.queued is not None or session.plan.outstanding
                        or server is not None and server.tx_status != m.TX_IDLE):
                    continue
                self.idle_timeout()
                return None

    def forward(self, buf):
        """Forward every complete message in buf; False once the client sent Terminate. Messages
        that go on as they came form runs sent at once; a message the proxy answers, rewrites or
        refuses cuts the run (`cut`). Each message type has its handler (HANDLERS)."""
        session, plan = self.session, self.session.plan
        slot, book, journal, cache = session.slot, session.statements, session.journal, self.cache_steps
        self.data, self.start = buf.buf, buf.pos  # the buffer, and the first byte of the run not yet sent
        self.buf = buf
        handlers = HANDLERS
        passes = PASS_COUNTED if session.proxy.admission.on else PASS
        while True:
            msg = buf.next()
            if msg is None:
                break
            mtype, begin, end = msg
            if self.skip_to_sync:
                if mtype not in VALID:
                    raise ProtocolViolation(f"invalid frontend message type {mtype}")
                self.start = end
                if mtype == S:
                    self.skip_to_sync = False
                    self.answer_at_sync()
                continue
            if (mtype in passes and slot.lease is not None and not book.discard_pending and not self.wrapping
                    and book.local is None):
                entry = p.PLAIN_FOR.get(mtype)  # the usual Execute, Sync, Flush, CopyData...: as is
                if entry is not None:
                    plan.entries.append(entry)
                self.count(mtype)
                continue
            if journal is not None and journal.pending_error is not None and mtype in VALID:
                self.cut(begin, end)  # (a replay that failed: its error, continuity/replay.py)
                self.refuse(mtype, journal.take_error())
                continue
            handler = handlers.get(mtype)
            if handler is None:
                self.cut(begin, end)  # what came before it is answered before the FATAL
                raise ProtocolViolation(f"invalid frontend message type {mtype}")
            if handler(self, mtype, begin, end) is TERMINATED:
                return False
            cache.next = None  # (a miss's Fill starts with its own message only)
        self.cut(buf.pos, buf.pos)
        if buf.pending() >= 5:  # a message not complete yet (frontend/forward_stream.py)
            mtype, length = buf.head()
            if mtype not in VALID:
                raise ProtocolViolation(f"invalid frontend message type {mtype}")
            self.stream_steps.held(mtype, length, buf)
        return True

    def cut(self, begin, end):
        """data[begin:end] does not go on as it came: send the run before it; the next run starts after it."""
        if begin > self.start:
            self.send(span(self.data, self.start, begin))
        self.start = end

    def send(self, data):
        """To the leased server; with replay on, into the session's journal too (continuity/journal.py).
        A server lost under a replayable journal is not the client's error: its pump replays."""
        session = self.session
        journal = session.journal
        if journal is None:
            session.server.send(data)
            return
        if type(data) is not bytes:  # (a slice of the client's buffer: the journal keeps a copy)
            data = bytes(data)
        try:
            session.server.send(data)
        except BackendError:
            journal.record(data)
            if journal.why_not() is not None:
                raise
            return
        journal.record(data)

    # --- one handler per message type: None, or TERMINATED -------------------------------------
    def on_query(self, mtype, begin, end):
        unnamed.destroyed(self.session)  # (a simple Query drops the unnamed statement, as in PostgreSQL)
        cache = self.session.proxy.cache
        if cache is not None and cache.quick_ok:  # a hot read, by its exact text (cache/)
            answer = cache.quick(self.session, self.data, begin, end)
            if answer is not None:
                self.cut(begin, end)
                self.session.counters.queries += 1
                self.session.send(answer)
                return None
        go_on, replacement = self.pipeline(mtype, begin, end)
        commit, self.commit = self.commit, None
        if not go_on:
            return None
        if self.batch_steps.next is not None and self.batch_steps.batch_query(begin, end, replacement):
            return None  # an INSERT coalesced with others' and answered (frontend/forward_batch.py)
        if not self.leased(mtype, begin, end):
            return None
        self.session.server.unnamed_owner = None
        if commit == "write" and replay.wrap_begin(self.session, self, begin):
            # a lone write outside a transaction block: in a transaction of its own (replay.py)
            self.session.plan.expect_ready_hidden()
            self.count(Q)
            if replacement is not None:
                self.cut(begin, end)
                self.send(replacement)
            else:
                self.cut(end, end)  # the run up to and with it goes out, then the xid and the COMMIT
            replay.wrap_end(self.session)
            return None
        elif commit and commit != "write":  # a COMMIT: the transaction's xid first, for a commit in doubt
            self.journal_steps.before_commit(begin, commit)
        if self.sql_prepare is not None or self.sql_needs:  # PREPARE / EXECUTE in pooled modes
            self.cut(begin, end)
            prepare, needs = self.sql_prepare, self.sql_needs
            self.sql_prepare, self.sql_needs = None, ()
            answer, prefix, on_fail = statements.sql_statements(self.session, prepare, needs)
            if answer is not None:
                self.answer_now(answer)
            else:
                self.send(prefix + (replacement or bytes(self.data[begin:end])))
                self.session.plan.expect(p.QUERY, on_fail=on_fail)
                self.count(Q)
            return None
        if self.cache_steps.next is not None:
            self.cache_steps.start_fill()
        return self.as_is(mtype, begin, end, replacement)

    def on_parse(self, mtype, begin, end):
        cache = self.session.proxy.cache
        if cache is not None and cache.quick_ok and self.cache_steps.quick_batch(cache, begin, end):
            return None  # a hot read's whole batch, by its exact text (cache/)
        go_on, replacement = self.pipeline(mtype, begin, end)
        commit, self.commit = self.commit, None
        anonymous = not names_statement(mtype, self.data, begin, end)
        if anonymous:  # the client's unnamed statement from now on (frontend/unnamed.py)
            unnamed.parsed(self.session, (replacement or bytes(self.data[begin:end])) if go_on else None)
        if not go_on:
            if replacement is not None:  # a stage's answer: the client's statement, the proxy's to answer
                self.local_steps.parsed(begin, end, replacement)
            return None
        if self.batch_steps.next is not None and self.batch_steps.batch_parse(begin, end, replacement):
            return None  # an INSERT coalesced with others' and answered (frontend/forward_batch.py)
        if self.session.proxy.cache is not None and self.cache_steps.cache_parse(begin, end, replacement):
            return None  # a cache hit: the whole batch answered
        if self.session.journal is not None and not self.journal_steps.journal_parse(begin, end, commit):
            return None
        named = not anonymous and self.session.identity.pooled
        if named and self.answered_locally(mtype, begin, end, replacement):
            return None
        if not self.leased(mtype, begin, end) or (named and self.translated(mtype, begin, end, replacement)):
            return None
        if anonymous:
            unnamed.sent(self.session)
        if self.cache_steps.next is not None:
            self.cache_steps.start_fill()
        return self.as_is(mtype, begin, end, replacement)

    def on_bind_or_describe(self, mtype, begin, end):
        session = self.session
        if session.statements.local is not None and (
                self.local_steps.bound(begin, end) if mtype == B else self.local_steps.described(begin, end)):
            return None  # a statement the proxy answers (frontend/forward_local.py)
        if mtype == B and session.cache_state is not None and session.cache_state.named and self.cache_steps.cache_bind(begin):
            return None  # a cache hit: the whole batch answered
        if mtype == B and session.statements.queries:
            self.completion_steps.executes_named(begin, end)
        if mtype == B and session.statements.texts is not None:  # (a fingerprint limit: limits/admission.py)
            portal, at = codec.read_cstr(self.data, begin + 5)
            session.statements.texts.bound(portal, codec.read_cstr(self.data, at)[0])
        if mtype == B and session.slot.lease is None and session.route.next_target is None:
            statements.route_of_bind(session, self.data[begin + 5:end])  # where its statement's Parse went
        if not self.leased(mtype, begin, end):
            return None
        if mtype == B and session.journal is not None and session.journal.named:
            self.journal_steps.journal_bind(begin, end)
        if unnamed.names_unnamed(mtype, self.data, begin, end):  # on this server: the client's own
            first = unnamed.restore(self, session)
            if first:
                self.cut(begin, begin)
                self.send(first)
        if self.cache_steps.next is not None:
            self.cache_steps.start_fill()  # (a Bind whose batch missed: translated or not, its answer is the fill's)
        if (session.identity.pooled and names_statement(mtype, self.data, begin, end)
                and self.translated(mtype, begin, end, None)):
            return None
        return self.as_is(mtype, begin, end, None)

    def on_close(self, mtype, begin, end):
        if self.session.statements.local is not None and self.local_steps.closed(begin, end):
            return None
        state = self.session.cache_state
        if state is not None and state.named and self.data[begin + 5] == STATEMENT:
            state.named.pop(codec.read_cstr(self.data[begin + 6:end], 0)[0], None)
        if self.session.statements.queries and self.data[begin + 5] == STATEMENT:
            self.session.statements.closed(codec.read_cstr(self.data[begin + 6:end], 0)[0])
        if self.session.journal is not None and not self.session.identity.pooled:
            self.session.journal.note_change()  # (session pooling: its statements, for session migrate)
        if (self.session.identity.pooled and names_statement(mtype, self.data, begin, end)
                and self.answered_locally(mtype, begin, end, None)):
            return None
        return self.on_other(mtype, begin, end)

    def on_sync(self, mtype, begin, end):
        if self.wrapping:  # the end of a batch wrapped in a transaction of its own (replay)
            self.cut(end, end)
            self.wrapped_sync()
            return None
        if self.session.slot.lease is None and not self.session.plan.in_extended:  # all before it was answered here
            self.cut(begin, end)
            self.answer(b"")
            return None
        return self.on_other(mtype, begin, end)

    def wrapped_sync(self):
        """The Sync of a wrapped batch went out (or the proxy's own in its place): its ReadyForQuery
        is cut, the xid and COMMIT follow (the COMMIT's ReadyForQuery is the client's)."""
        self.wrapping = False
        self.session.plan.expect_ready_hidden(p.SYNC)
        self.count(S)
        replay.wrap_end(self.session)

    def on_flush_or_copy(self, mtype, begin, end):
        if self.session.slot.lease is None:  # nothing to flush; CopyData outside COPY: PostgreSQL ignores it
            self.cut(begin, end)
            return None
        return self.on_other(mtype, begin, end)

    def on_other(self, mtype, begin, end):
        """Execute, FunctionCall, and the others once leased: to the server as they came."""
        if self.leased(mtype, begin, end):
            self.as_is(mtype, begin, end, None)
        return None

    def on_execute(self, mtype, begin, end):
        """Execute and FunctionCall: each one execution against the limits and its tenant's qps
        (limits/admission.py); one refused gets 53400 and the rest of its batch is skipped to Sync."""
        session = self.session
        admission = session.proxy.admission
        if self.precounted:
            self.precounted = False
        elif admission.on:
            texts = session.statements.texts
            sql = texts.executed(codec.read_cstr(self.data, begin + 5)[0]) if texts is not None and mtype == EXECUTE \
                else None
            refused = admission.take(session, 1, sql)
            if refused is not None:
                self.cut(begin, end)
                self.refuse(mtype, codec.error_response(*refused))
                return None
        if mtype == EXECUTE and session.statements.local is not None and self.local_steps.executed(begin, end):
            return None  # a portal the proxy answers (frontend/forward_local.py)
        return self.on_other(mtype, begin, end)

    def on_terminate(self, mtype, begin, end):
        self.cut(begin, end)
        return TERMINATED

    # --- the steps the handlers share ----------------------------------------------------------
    def pipeline(self, mtype, begin, end):
        """The size limit and the stages for a Query or Parse: (go on?, rewritten message or None);
        (False, decisions.Answer) for a Parse a stage answered (on_parse makes it the client's statement)."""
        if end - begin > self.max_query:
            self.cut(begin, end)
            self.refuse_too_large(mtype, end - begin)
            return False, None
        if not self.session.proxy.stages and self.premade is None:
            return True, None
        go_on, replacement = decisions.run(self, mtype, self.data, begin, end)
        if not go_on:
            self.batch_steps.next = None  # (a stage's refusal or answer: nothing to coalesce)
            self.cut(begin, end)
            if replacement.__class__ is decisions.Answer:  # (a Parse's: forward_local.py, after on_parse's steps)
                return False, replacement
            self.refuse(mtype, replacement)
            return False, None
        return True, replacement

    def leased(self, mtype, begin, end):
        """Whether the session has a server for this message, leasing one (pooled modes: a new
        transaction) if needed; a lease that cannot be had is the client's error."""
        session = self.session
        if session.slot.lease is None:
            try:
                session.slot.take()
            except FatalError:
                raise
            except ProxyError as e:
                self.cut(begin, end)
                self.sql_prepare, self.sql_needs = None, ()
                self.refuse(mtype, codec.error_response(e.sqlstate, e.message, detail=e.detail))
                return False
        if session.statements.discard_pending:  # DISCARD ALL / DEALLOCATE ALL drops the server's statements
            session.statements.discarded()
            session.server.statements.clear()
        journal = session.journal
        if journal is not None and journal.needs_snapshot and not session.identity.pooled and not session.plan.owes():
            self.cut(begin, begin)
            replay.snapshot(session)  # its new session state, for a session migrate
        return True

    def answered_locally(self, mtype, begin, end, replacement):
        """A named Parse the pool knows, or a Close: answered by the proxy (True), or a server is needed."""
        answer = self.statement_step(statements.answer_locally, mtype, begin, end, replacement)
        if answer is REFUSED:
            return True
        if answer is statements.NEEDS_SERVER:
            return False
        self.cut(begin, end)
        self.answer_now(answer)
        return True

    def translated(self, mtype, begin, end, replacement):
        """A Parse/Bind/Describe naming a statement, sent under the server's name (True)."""
        translated = self.statement_step(statements.translate, mtype, begin, end, replacement)
        if translated is REFUSED:
            return True
        if translated is None:
            return False
        self.cut(begin, end)
        out, answer = translated
        if out:
            self.send(out)
            self.count(mtype)
        self.answer_now(answer)
        return True

    def statement_step(self, step, mtype, begin, end, replacement):
        """step(session, mtype, message) of statements.py; its ProxyError (42P05, 26000) is
        refused to the client as PostgreSQL would: REFUSED."""
        try:
            return step(self.session, mtype, replacement or bytes(self.data[begin:end]))
        except ProxyError as e:
            self.cut(begin, end)
            self.refuse(mtype, codec.error_response(e.sqlstate, e.message))
            return REFUSED

    def as_is(self, mtype, begin, end, replacement):
        """To the server in the run (or rewritten), expecting its usual answer."""
        if replacement is not None:
            self.cut(begin, end)
            self.send(replacement)
        entry = p.entry_for(mtype, self.data, begin)
        if entry is not None:
            self.session.plan.entries.append(entry)
        self.count(mtype)
        return None

    def refuse_too_large(self, mtype, size):
        limit = self.max_query - 6
        self.refuse(mtype, codec.error_response(
            PROGRAM_LIMIT_EXCEEDED, f"query text of about {size - 6} bytes exceeds pipeline.max_query_bytes ({limit})"))

    def count(self, mtype):
        """A request went to the server: the plan counts what it owes; the session, its queries."""
        session = self.session
        session.plan.sent(mtype)
        if mtype == Q or mtype == EXECUTE:
            session.counters.queries += 1

    # --- answers from the proxy -----------------------------------------------------------------
    def refuse(self, mtype, payload):
        """Answer a Query/Sync/FunctionCall now. An extended message: the error goes out now (after
        what the server owes before it, as PostgreSQL flushes an error at once, Flush or not), then
        messages are dropped up to Sync, which gets the ReadyForQuery. Inside a transaction block
        the error fails the server's transaction too, as any error does in PostgreSQL (fail_block);
        a Query's payload may also be the proxy's answer (a stage's, a cache hit): that fails nothing."""
        session = self.session
        failing = payload[:1] == ERROR_RESPONSE and self.in_block()
        if mtype == Q or mtype == S or mtype == F:
            if failing:
                self.fail_block()
                self.answer_now(session.plan.fake(payload, p.FAILED_NOW))
            else:
                self.answer(payload)
            return
        self.skip_to_sync, self.fail_at_sync = True, failing
        if session.plan.in_extended and session.server is not None:
            self.send(codec.FLUSH)  # the answers to the messages before it, now
        self.answer_now(session.plan.fake(payload))

    def answer_at_sync(self):
        session = self.session
        if self.wrapping:  # (a batch wrapped in a transaction of its own: it ends at its COMMIT)
            self.send(codec.SYNC)
            self.wrapped_sync()
            return
        failing, self.fail_at_sync = self.fail_at_sync, False  # (refused inside a transaction block)
        extended = session.plan.in_extended
        if extended:
            # Messages of this batch before the refused one reached the server: it finishes them
            # at our Sync, whose ReadyForQuery is the client's (unless the block fails after it).
            # (Unlike PostgreSQL, their effects are not rolled back with the batch.)
            self.send(codec.SYNC)
            session.plan.expect(p.SYNC, drop=failing)
            self.count(S)
        if failing:  # the server's transaction fails too
            self.fail_block()
            self.answer_now(session.plan.fake(p.FAILED_NOW))
        elif not extended:
            self.answer(b"")

    def in_block(self):
        """Whether the session's server is inside a transaction block (as far as its answers tell)."""
        server = self.session.server
        return server is not None and server.tx_status == TX_IN_BLOCK

    def fail_block(self):
        """The server's transaction block fails, as PostgreSQL's does on any error: a statement
        of the proxy's that raises (its answer cut), so that the client's later statements get
        25P02 and its COMMIT rolls back, as if the server had raised the proxy's error itself."""
        self.session.plan.expect_hidden()
        replay.send_hidden(self.session.server, FAIL_BLOCK)

    def answer(self, payload):
        """An answer and a ReadyForQuery, after everything the server still owes the client."""
        self.answer_now(self.session.plan.fake(payload or b"", p.READY_NOW))

    def answer_now(self, ready):
        if ready:
            session = self.session
            session.send(ready)
            session.slot.release_if_idle()
            if session.limits_held and not session.plan.owes():  # (the proxy answered the last request)
                release_limits(session)


# One handler per message type a client may send (VALID); a class-level table, not one per session.
HANDLERS = {Q: Forwarder.on_query, P: Forwarder.on_parse, B: Forwarder.on_bind_or_describe,
            D: Forwarder.on_bind_or_describe, C: Forwarder.on_close, S: Forwarder.on_sync, X: Forwarder.on_terminate,
            m.FLUSH[0]: Forwarder.on_flush_or_copy, **{t: Forwarder.on_flush_or_copy for t in COPY_MESSAGES},
            EXECUTE: Forwarder.on_execute, F: Forwarder.on_execute}
assert set(HANDLERS) == VALID
