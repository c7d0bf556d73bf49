"""The fast path (issue 33): a session's common request handled in its client socket's read callback,
on gevent's loop, without waking the session's greenlet.

While the forwarder has nothing in hand (no partial message, no large message streaming), its
greenlet parks here instead of reading the socket; the socket's reads are the loop's. The callback
takes a simple Query, an unnamed extended batch (Parse, Bind, [Describe,] Execute, Sync) and a
named statement's execution (Bind, [Describe,] Execute, Sync): it runs the same code the greenlet
would (decisions.decide: the stages, their decisions applied to the session's parts), uses the
lease the session holds (inside a transaction, a pinned client, session pooling: when the relay's
callback pump serves it) or takes an idle server connection that needs nothing done to it
(LeaseSlot.take_now; in a full pool the request waits in the pool's line, `Queued`), sends the
bytes as they came and counts what the server owes (the plan); the answer comes back through the
callback pump, which ends the lease at its ReadyForQuery where the pool mode says, as always. A
request whose handling only sends (a named statement's execution, a COMMIT whose xid replay asks
first, a lone write replay wraps) goes through the forwarder's own handlers, in the callback.
Anything else (other messages, a refusal, a rewrite, a decision only the greenlet can carry
out...) is handed to the greenlet with the bytes, and the stages' result when they ran: it goes
on exactly as if it had read them itself.

It is on while every stage built is `callback_safe` (its process never waits), the query cache is
off and the client's socket is plain (not TLS); `[server] fast_path`.
Hits and misses by reason: /stats (total_fast_path_*), GET /fast_path, Prometheus.
"""
import logging

from gevent.hub import Waiter

from .. import pipeline
from ..errors import DECODING_ERRORS, ProtocolViolation
from ..pipeline.stage import StageResult
from ..protocol.framing import MessageBuffer
from ..speedups import NAMED_EXECUTIONS as NAMED, PORTAL, key_of, query_key, read, unnamed_batch
from ..sqlshape import DIGITS_TO_0, fast_key_sound
from ..protocol import messages as m
from ..sockets import READ, plain, watcher
from ..continuity import replay
from . import decisions, plan as p, statements, unnamed
from .fastpath_waits import ANSWERED, Waiting

log = logging.getLogger(__name__)

Q = m.QUERY[0]
CONTINUE = StageResult.CONTINUE
LARGEST = 8192  # a Query larger than this takes the usual way (and the kernel takes it in one send)
QUIET_TEXTS = 512  # texts (fast keys) a session remembers the stages let through
# the entries of the unnamed batches taken (speedups.unnamed_batch), in order: what each message's answer ends
PBES = (p.PLAIN[p.ONE], p.PLAIN[p.ONE], p.PLAIN[p.EXECUTE], p.PLAIN[p.SYNC])
PBDES_PORTAL = PBES[:2] + (p.PLAIN[p.DESCRIBE_PORTAL],) + PBES[2:]
PBDES_STATEMENT = PBES[:2] + (p.PLAIN[p.DESCRIBE_STATEMENT],) + PBES[2:]
# the entries of what follows its Bind (statements.translate expects the Bind's own answer)
NAMED_DESCRIBED = (p.PLAIN[p.DESCRIBE_PORTAL], p.PLAIN[p.EXECUTE], p.PLAIN[p.SYNC])
NAMED_EXECUTED = NAMED_DESCRIBED[1:]
EMPTY = b"\0"  # the unnamed portal's name (and NUL)
PLAIN_SERVERS = frozenset(("disable", "prefer"))  # [tls] server_mode: server connections may be plain
TERMINATE = m.TERMINATE  # (a miss by its own name: not a request the fast path could have taken)
HANDLERS = "the forwarder's handlers"  # let_through(): the request goes through them in the callback

MISSES = {}  # reason -> how many requests the fast path handed to their greenlet (this process)


def enabled(session):
    """Whether session's requests may take the fast path (asked when its forwarder starts, and
    again at each park: a reload may change the stages)."""
    proxy = session.proxy
    return (proxy.config.server.fast_path and proxy.cache is None and proxy.config.tls.server_mode in PLAIN_SERVERS
            and session.writer.raw is not None and plain(session.sock) and proxy.stages_in_callback)


def missed(reason):
    MISSES[reason] = MISSES.get(reason, 0) + 1


class FastPath(Waiting):
    """One session's fast path (made by its Forwarder)."""
    __slots__ = ("fwd", "session", "raw", "watcher", "waiter", "held", "stages", "quiet", "rest",
                 "ready", "queued", "writes", "commits", "batching", "text_stages", "batch_rest", "described", "at_rest")

    def __init__(self, forwarder):
        self.fwd = forwarder
        self.session = forwarder.session
        self.raw = self.session.writer.raw  # the client's plain socket (fileno() -1 once it is closed)
        self.watcher = None
        self.waiter = None
        self.held = None  # bytes handed over while the greenlet was not parked (next park returns them)
        # Texts every stage let through without a decision, by their fast key (sqlshape: digits as
        # 0, kept only where every digit is a literal's): the stages' screens and analyses look at
        # words and the statements' structure, never at a number's value, so such a text's twins
        # (the same query with other numbers) pass them alike (stage.text_only); the other stages
        # (a limit counts every query) still run for them. Per session (its pool mode and journal
        # are part of what the stages saw), renewed when a reload rebuilds the stages.
        self.stages, self.quiet, self.rest = None, set(), ()  # rest: the stages run for a remembered text
        self.text_stages = ()  # the others
        self.batch_rest = ()  # the rest but those that only aim the next lease: run for a text a batch answers
        self.writes = set()  # texts whose one decision was "a lone write": let through inside a transaction block
        self.commits = set()  # texts whose one decision was "a COMMIT alone" (replay asks its xid): the handlers'
        self.batching = {}  # texts whose decisions were a batch (and a lone write) -> the batch's shape (batch/)
        self.ready = ()  # stages' fast_ready checks
        # the request waiting without its greenlet, in its pool's line (Queued) or for its batch
        # (batch/ Row); the client's reads wait meanwhile
        self.queued = None
        self.described = None  # the waiting row's, when an unnamed batch sent it: whether it had a Describe
        # The lease its last request went on as it came (go_on), or ANSWERED (its batched row
        # answered in the callback), until its next request or its greenlet's turn (hand):
        # blocked()'s shortcut (a session's state decided once, again only when something changes)
        self.at_rest = None

    def park(self):
        """Wait for the client's bytes with its socket's reads in the loop's hands: what the
        callback does not handle comes back (bytes; b"" at EOF)."""
        if self.held is not None:
            data, self.held = self.held, None
            return data
        w = self.watcher
        if w is None:
            w = self.watcher = watcher(self.session.sock, READ)
        waiter = self.waiter = Waiter()
        if self.queued is None:
            w.start(self.readable)
        try:
            return waiter.get()
        finally:
            w.stop()
            self.waiter = None

    def close(self):
        if self.queued is not None:  # (the session ends: its request leaves the line)
            self.queued.leave()
            self.queued = None
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.close()
            self.watcher = None

    def readable(self):
        try:
            data = read(self.raw.fileno())  # (speedups.read: what the socket has)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # (a client gone: the greenlet ends the session as at EOF)
        # At rest (blocked()'s shortcut, here: a call less per request), only what others change is
        # asked: the session's last request went on as it came (at_rest: its lease), the answer
        # ended that lease in whole() (the pump's `clean`: the whole answer, nothing but the usual
        # messages, the plan owes nothing) at once in the callback (the slot's `spare` is still that
        # lease: nothing to ask the server at its end, and no lease began since) and the greenlet was
        # not handed anything since: every other state blocked() asks is as it found it before that
        # request, which changed none of it (let_through hands over every request whose stages'
        # decisions the greenlet carries out), nor did the answer. Or (ANSWERED) the last request
        # was a batched row the callback answered (row_answered): placed with no lease and the
        # plan owing nothing, it sent nothing to a server and took no lease; the client's reads
        # and the greenlet waited meanwhile, and its answer (the batch's, or a cancel's error)
        # went out as the proxy's own, from a plan with nothing before it. Or, inside a transaction
        # block of a pooled client, the lease the last request went on is still the slot's, its
        # pump serving it (running, not held back by the client's backlog, the server not broken),
        # and the last bytes the pump took were the whole answer (`clean`) with nothing owed now
        # (a request sent since would be owed: a client's pipeline asks everything): as after a
        # lease that ended, but the lease goes on. (Session pooling asks everything: a statement
        # that changed the session's state marks the journal at that answer.)
        lease, self.at_rest = self.at_rest, None
        try:
            rest = None  # (None: blocked() asks everything)
            if lease is not None:
                session = self.session
                slot = session.slot
                if (slot.spare is lease and slot.pump.clean or lease is ANSWERED
                        or slot.lease is lease and not session.plan.outstanding and session.identity.pooled
                        and slot.pump is not None and slot.pump.rests_on(lease)):
                    proxy = session.proxy
                    if session.closing is None and not proxy.paused and proxy.suspended is None:
                        rest = "state the greenlet must see" if session.writer.pending else True
            reason = (self.query(data, rest) if data[0] == Q else self.batch(data, rest)) if data else "the client closed"
        except Exception:  # a bug here costs the fast path, never the session: the greenlet decides
            log.exception("%r: the fast path failed", self.session)
            reason = "internal error"
        if reason is not None:
            missed(reason)
            self.session.counters.fast_misses += 1
            self.hand(data)

    def hand(self, data):
        """The greenlet takes over with data (it may have parked elsewhere meanwhile: then it reads
        the socket itself and these bytes must reach it first)."""
        self.watcher.stop()
        self.at_rest = None  # (whatever the greenlet does, blocked() asks everything again)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.switch(data)
        else:
            self.held = data

    def blocked(self, rest=None):
        """Why the session's state keeps a request arriving now from the fast path, or None: the
        lease it holds must be its callback pump's (else it may take one between transactions).
        rest: why not, as readable() found it when the session was at rest, or None: ask
        everything (at rest with nothing in the way, its callers do not ask)."""
        if rest is not None:
            return rest
        session = self.session
        slot = session.slot
        fwd = self.fwd
        if not slot.idle.is_set():
            return "a lease ending"
        lease = slot.lease
        if lease is not None:  # (held: a transaction in progress, a pinned client, session pooling)
            pump = slot.pump
            if pump is None or pump.lease is not lease or not pump.running or pump.paused or lease.server.broken:
                return "a lease its greenlet serves"
        elif not session.identity.pooled or slot.pinned:
            return "no lease (session pooling)"
        proxy = session.proxy
        if session.closing is not None or proxy.paused or proxy.suspended is not None:
            return "paused or ending"
        journal, plan = session.journal, session.plan
        if (plan.outstanding or plan.in_extended or plan.entries or fwd.skip_to_sync or fwd.wrapping
                or session.statements.discard_pending or session.writer.pending or not session.settings.checked
                or journal is not None and (journal.pending_error is not None
                                            or journal.needs_snapshot and not session.identity.pooled)):
            return "state the greenlet must see"
        return None

    def let_through(self, ctx, result, sql, lease, pinned):
        """Whether the stages' result lets the request go on as it came (True), or through the
        forwarder's handlers in the callback (HANDLERS: a COMMIT whose xid replay asks first, a
        lone write it wraps in a transaction of its own: what they do then only sends), or only
        through the greenlet (False: a refusal, a rewrite, PREPARE, a batch, a pin, DISCARD ALL: what
        the forwarder does besides sending when it leases, leased(), is the greenlet's)."""
        fwd = self.fwd
        if fwd.commit == "write" and lease is not None and not replay.wraps(self.session):
            fwd.commit = None  # (a write inside a transaction block goes as it is: on_query's rule)
        session = self.session
        if (result is not CONTINUE or ctx.sql is not sql or fwd.sql_prepare is not None or fwd.sql_needs
                or fwd.batch_steps.next or session.slot.pinned is not pinned
                or session.statements.discard_pending):  # (DISCARD ALL: leased() clears the server's statements)
            return False
        return True if fwd.commit is None else HANDLERS

    def stages_ready(self, stages):
        """Whether every stage can decide now, renewing what the fast path keeps of them after a
        reload rebuilt them."""
        if stages is not self.stages:
            self.stages, self.quiet, self.writes, self.batching = stages, set(), set(), {}
            self.commits = set()
            self.rest = tuple(stage for stage in stages if not stage.text_only)
            self.batch_rest = tuple(stage for stage in self.rest if not stage.aims_lease)
            self.text_stages = tuple(stage for stage in stages if stage.text_only)
            self.ready = tuple(stage.fast_ready for stage in stages if stage.fast_ready is not None)
        session = self.session
        for ready in self.ready:
            if not ready(session):
                return False
        return True

    def query(self, data, rest):
        """Handle data if it is one simple Query the fast path can take: None, else why not. rest:
        for blocked()."""
        session, fwd = self.session, self.fwd
        n = len(data)
        key = query_key(data, DIGITS_TO_0) if n <= LARGEST else None  # (its fast key, digits as 0)
        if key is None:
            return "not one Query"  # (or a NUL inside its text: the greenlet's error to give)
        if rest is not True:
            reason = self.blocked(rest)
            if reason is not None:
                return reason
        proxy, plan = session.proxy, session.plan
        lease = session.slot.lease
        stages = proxy.stages
        if n > fwd.max_query:
            return "not one Query"
        book = session.statements
        if book.unnamed is not None or book.local is not None:
            unnamed.destroyed(session)  # (a simple Query drops the unnamed statement, as in PostgreSQL)
        if stages:
            if (stages is not self.stages or self.ready) and not self.stages_ready(stages):
                return "a stage is not ready (a function catalog loading)"
            shape = self.batching.get(key) if self.batching and lease is None else None  # (batch/)
            if shape is not None and not self.batch_rest and plan.completions is None:
                if self.batched(n, data[5:-1].decode("utf-8", "replace"), shape):
                    return None  # (a twin's stages decided a batch, and nothing else runs)
                shape = None
            known = shape is not None or key in self.quiet or (
                key in self.writes and lease is not None and not replay.wraps(session))
            if not known and key in self.commits and not self.rest and plan.completions is None:  # (as quiet texts)
                fwd.commit = "lone"  # (its one decision, as decisions.apply() takes it: the handlers ask its xid)
                fwd.premade = decisions.LET_THROUGH  # (for the greenlet, should no connection fit)
                return self.go_on(lease, data, FastPath.handled, decisions.LET_THROUGH)
            if not known or self.rest or plan.completions is not None:
                pinned = session.slot.pinned  # (as the stages find it: whether one pins the client)
                sql = data[5:-1].decode("utf-8", "replace")
                ctx = pipeline.QueryContext(session, sql, "simple", "", n - 6,
                                            n - 6 > proxy.config.pipeline.max_parse_bytes)
                result = decisions.decide(fwd, ctx, "", (self.rest if shape is None else self.batch_rest)
                                          if known else None)
                if shape is not None and result is CONTINUE:  # (the text stages, whose decision was a batch)
                    if ctx.sql is sql and self.batched(n, sql, shape):
                        return None
                    skipped = tuple(stage for stage in self.rest if stage.aims_lease)  # (not batchable now)
                    result = decisions.decide(fwd, ctx, "", skipped + self.text_stages)
                if fwd.batch_steps.next is not None and result is CONTINUE and ctx.sql is sql:
                    shape = fwd.batch_steps.take()
                    if self.batched(n, sql, shape):
                        if not known and fast_key_sound(key[5:]) and self.batch_only(ctx, shape):
                            remember(self.batching, key, shape)
                        return None
                through = self.let_through(ctx, result, sql, lease, pinned)
                if through is not True:
                    premade = fwd.premade = (ctx, result, sql, "", b"")
                    if not through:
                        return "a stage's decision"
                    if not known and ctx.decided.only_a_commit() and fast_key_sound(key[5:]):
                        remember(self.commits, key)
                    return self.go_on(lease, data, FastPath.handled, premade)
                if not known and fast_key_sound(key[5:]):
                    if ctx.decided is None:  # (every stage let it through)
                        remember(self.quiet, key)
                    elif ctx.decided.only_a_write():  # (as good as let through inside a transaction block)
                        remember(self.writes, key)
            else:
                stages = None  # (let through by every stage: nothing to hand over if no connection fits)
        if stages and lease is None:
            fwd.premade = (ctx, result, sql, "", b"")  # (for the greenlet, should no connection fit)
        return self.go_on(lease, data, FastPath.query_sent, None)

    def go_on(self, lease, data, go, args):
        """The request goes on (go, a FastPath method: no bound method made per request): on the
        lease held, or on one taken now, or once its turn comes in its pool's line (None); else why
        it cannot (the stages' result stays in fwd.premade for the greenlet). What go returns goes
        to the server (into replay's journal first): the client's bytes as they came, or as
        translated (go returns None when the forwarder's handlers sent them)."""
        if lease is None:
            slot = self.session.slot
            if slot.spare is None or not slot.take_again():  # (at rest: the last lease's connection again)
                took = slot.take_now()
                if took is not True:
                    return self.line_up(took, data, go, args)
            lease = slot.lease
        self.fwd.premade = None
        out = go(self, lease, data, args)
        if out is not None:
            journal = self.session.journal
            if journal is not None:
                journal.record(out)
            lease.server.send_now(out)  # (its kernel socket: the fast path takes no TLS connection)
            self.at_rest = lease
        return None

    def query_sent(self, lease, data, _):
        """The Query goes to lease's server as it came; the plan expects its answer."""
        session = self.session
        lease.server.unnamed_owner = None
        session.plan.sent_query()
        counters = session.counters
        counters.bytes_in += len(data)
        counters.queries += 1
        counters.fast_hits += 1
        return data

    def batch(self, data, rest):
        """Handle data if it is one unnamed extended batch in one read (Parse, Bind, [Describe,]
        Execute, Sync: the unnamed statement and portal), as most drivers send a query with
        parameters: the stages decide on its Parse here, a lease is found as for a Query, the batch
        goes as it came. None, or why not."""
        session, fwd = self.session, self.fwd
        n = len(data)
        if n > LARGEST:
            return "not one unnamed batch"
        framed = unnamed_batch(data)
        if framed is None:
            return "not one unnamed batch"
        starts, shape, nul = framed
        if shape in NAMED:  # (nul: where the statement's name ends)
            return self.bound(data, starts, nul, rest) if nul > 0 else "not one unnamed batch"
        if nul < 0:
            if shape == TERMINATE:
                return "the client ends the session"
            return "not one unnamed batch"  # (or a named statement or portal: translated by the greenlet)
        parse_end = starts[1]
        if parse_end > fwd.max_query:
            return "not one unnamed batch"
        if rest is not True:
            reason = self.blocked(rest)
            if reason is not None:
                return reason
        proxy, slot, book, journal = session.proxy, session.slot, session.statements, session.journal
        if proxy.admission.on:
            return "executions counted (limits)"
        if book.queries or book.texts is not None or journal is not None and journal.named:
            return "statements followed by name (limits, completions, replay)"
        lease, pinned, stages = slot.lease, slot.pinned, proxy.stages
        if stages:
            if (stages is not self.stages or self.ready) and not self.stages_ready(stages):
                return "a stage is not ready (a function catalog loading)"
            key = key_of(data, 5, nul)  # (the text as it is: a batch's values are in its Bind; NUL first, unlike a Query's)
            known = key in self.quiet
            if not known or self.rest or session.plan.completions is not None:
                sql = data[6:nul].decode("utf-8", "replace")
                ctx = pipeline.QueryContext(session, sql, "extended", "", nul - 6,
                                            nul - 6 > proxy.config.pipeline.max_parse_bytes)
                result = decisions.decide(fwd, ctx, "", self.rest if known else None)
                if fwd.batch_steps.next is not None and result is CONTINUE and ctx.sql is sql:
                    fwd.batch_steps.take()  # (used up, as the forwarder's batch_parse does)
                    if lease is None and self.batched_extended(data, starts):
                        return None  # (an INSERT the batch stage chose: it waits for its batch)
                # (the stages' result: the greenlet's, or the handlers')
                premade = fwd.premade = (ctx, result, sql, "", bytes(data[nul + 1:parse_end]))
                through = self.let_through(ctx, result, sql, lease, pinned)
                if through is not True:
                    return self.go_on(lease, data, FastPath.handled, premade) if through else "a stage's decision"
                if not known and ctx.decided is None:
                    remember(self.quiet, key)
            else:
                fwd.premade = decisions.LET_THROUGH
        return self.go_on(lease, data, FastPath.batch_sent, starts)

    def bound(self, data, starts, name_end, rest):
        """A batch that runs a statement the client prepared by name (Bind, [Describe,] Execute,
        Sync: asyncpg, JDBC, pgbench -M prepared): no stage looks at a Bind; a lease is found where
        the statement's Parse went, as the forwarder would, then its own handlers take the batch in
        the callback (the name translated, the statement parsed on this connection first if it
        lacks it: nothing they do waits once the lease is there). name_end: where the statement's
        name ends (speedups.unnamed_batch checked the rest: the unnamed portal, described and
        executed). None, or why not."""
        session = self.session
        book = session.statements
        stmt = book.by_name.get(data[6:name_end].decode("utf-8", "replace"))
        if stmt is None:
            return "a statement the pool does not translate"  # (session pooling, or not prepared: 26000)
        if rest is not True:
            reason = self.blocked(rest)
            if reason is not None:
                return reason
        if session.proxy.admission.on:
            return "executions counted (limits)"
        lease = session.slot.lease
        if lease is None and session.route.next_target is None:  # (on_bind_or_describe's rule: where its Parse went)
            statements.aim_at(session, stmt)
        journal = session.journal
        if (book.local is not None or book.queries or book.texts is not None or journal is not None and journal.named
                or not session.identity.pooled):
            return self.go_on(lease, data, FastPath.handled, None)  # (a feature of the handlers' at work)
        return self.go_on(lease, data, FastPath.bound_sent, (stmt, name_end + 1, starts[1], len(starts) == 4))

    def bound_sent(self, lease, data, bound):
        """What the forwarder's handlers do with a named statement's execution once leased when no
        feature of theirs is at work (on_bind_or_describe: the Bind translated as statements.translate
        does it, by statements.bind, which puts the statement on this connection first if it lacks it
        and expects the answers; the Describe, Execute and Sync as they came): in one send. bound:
        (the statement, where the Bind's parameters begin and where it ends, whether a Describe follows)."""
        session = self.session
        stmt, params, end, described = bound
        out = statements.bind(session, lease.server, stmt, EMPTY, data[params:end]) + data[end:]
        session.plan.sent_request(NAMED_DESCRIBED if described else NAMED_EXECUTED)
        counters = session.counters
        counters.queries += 1
        counters.bytes_in += len(data)
        counters.fast_hits += 1
        return out

    def handled(self, lease, data, premade):
        """The forwarder's own handlers take data on lease (nothing they do waits then), with the
        stages' result when they ran (premade); what they raise ends the session in its greenlet,
        as if it had read data itself."""
        session = self.session
        buf = MessageBuffer(len(data) + 1)
        buf.feed(data)
        session.counters.bytes_in += len(data)
        self.fwd.premade = premade
        try:
            self.fwd.forward(buf)
        except BaseException as e:
            if isinstance(e, DECODING_ERRORS):
                e = ProtocolViolation("invalid message format")
            self.watcher.stop()
            waiter, self.waiter = self.waiter, None
            if waiter is not None:
                waiter.throw(e)
            else:  # (never parked elsewhere while the callback runs: reported, the session goes on)
                log.error("%r: %s after the fast path handed its request on", session, e)
            return
        session.counters.fast_hits += 1

    def batch_sent(self, lease, data, starts):
        """What the forwarder's handlers do with these messages once leased (on_parse,
        on_bind_or_describe, on_execute, on_sync with no feature of theirs at work): the unnamed
        statement is the client's, here; the batch goes as it came; the plan expects each
        message's usual answer."""
        session = self.session
        unnamed.parsed(session, data[:starts[1]])
        unnamed.sent(session, lease.server)
        if len(starts) == 5:  # (fwd.count per message, in one: the plan's entries, one query)
            batch = PBDES_PORTAL if data[starts[2] + 5] == PORTAL else PBDES_STATEMENT
        else:
            batch = PBES
        session.plan.sent_request(batch)
        counters = session.counters
        counters.queries += 1
        counters.bytes_in += len(data)
        counters.fast_hits += 1
        return data


def remember(texts, key, shape=None):
    """key into texts (a set), or with its batch's shape (a dict)."""
    if len(texts) >= QUIET_TEXTS:
        texts.clear()
    if shape is None:
        texts.add(key)
    else:
        texts[key] = shape
