"""The fast path's requests that wait without their greenlet (frontend/fastpath.py): a batched
INSERT waiting for its batch to commit (batch/: a simple Query, or an unnamed extended batch), and
a request waiting in its pool's line for a connection (queued.py). The client's reads stop
meanwhile; the answer, or the request's way on, comes from a loop callback."""
import logging

from .. import pipeline
from ..pipeline.stage import StageResult
from ..pool.pool import CHECK_DUE
from . import unnamed
from .forward_batch import extended_answer, extended_row
from .queued import Queued

log = logging.getLogger(__name__)
CONTINUE = StageResult.CONTINUE
# FastPath.at_rest after a batched row was answered in the callback (row_answered): the state
# blocked() asks is as it was when the row was placed (readable() says why)
ANSWERED = "a batched row answered in the callback"


class Waiting:
    """FastPath's part for its waiting requests (a base class: FastPath holds the state: session,
    fwd, watcher, waiter, queued, described...)."""
    __slots__ = ()

    def batched(self, size, sql, shape):
        """A single-row INSERT the batch stage chose (batch/; shape: its key): it joins its batch;
        its answer is written from a loop callback once the batch committed (`row_answered`), the
        client's reads stopped meanwhile. False: not batchable now, it goes on as any Query."""
        session = self.session
        found = session.proxy.batches.place(session, sql, shape)
        if found is None:
            return False
        return self.wait_for_batch(size, *found)

    def wait_for_batch(self, size, batcher, row, described=None):
        """The request (size bytes) waits for its row's batch without its greenlet, the client's
        reads stopped; row_answered() answers it (described: an unnamed batch's, whether it had a
        Describe)."""
        session = self.session
        self.described = described
        self.fwd.commit = None  # (replay's "a lone write": the proxy answers it, nothing is sent)
        self.queued = row
        session.slot.wait_on(row)  # (a CancelRequest reaches it: Row.set_exception)
        self.watcher.start(self.hold)
        batcher.add(row, self.row_answered)
        counters = session.counters
        counters.bytes_in += size
        counters.fast_hits += 1
        return True

    def batched_extended(self, data, starts):
        """An unnamed batch whose INSERT the batch stage chose (forward_batch.py batch_parse, in the
        callback): its text parameters become the row's literals, it joins its batch and is
        answered once the batch committed (ParseComplete, BindComplete, its Describe's answer, its
        rows and tag). False: not batchable now, it goes on as any batch."""
        session = self.session
        placed = extended_row(session, data, 0, starts[1])  # (its Sync ends data: fastpath.messages)
        if placed is None:
            return False
        batcher, row, _, describe, _ = placed
        unnamed.parsed(session, data[:starts[1]])  # (the client's unnamed statement, as on_parse notes it)
        return self.wait_for_batch(len(data), batcher, row, describe)

    def batch_only(self, ctx, shape):
        """Whether all the text stages decided on ctx's text is this batch (and a lone write, which
        the batch answers): its twins may then skip them (the other stages run for every query).
        The stages ran in one pass; where others ran with them, the text stages are asked alone."""
        decided = ctx.decided
        if self.rest:
            probe = pipeline.QueryContext(ctx.session, ctx.sql, ctx.protocol, "", ctx.size, ctx.large)
            if pipeline.run(self.text_stages, probe) is not CONTINUE:
                return False
            decided = probe.decided
        return decided is not None and decided.batch == shape and decided.only("batch", "autocommit_write")

    def hold(self):
        """The client's reads while its request waits (row_answered, dequeued or refused go on):
        bytes that come meanwhile (a pipeline) stay in the socket, the reads stop until then. (The
        watcher stays armed with this callback rather than stopped at once: a watcher stopped in
        its own callback costs gevent a second stop() looked up by name, ~1,500 instructions.)"""
        self.watcher.stop()

    def row_answered(self, row):
        """The batch of the request waiting committed, or failed (a loop callback): its answer."""
        queued = self.queued
        if queued is not row:  # (the session ended meanwhile: close())
            return
        self.queued = None
        self.session.slot.wait_on(None)
        try:
            answer = row.answer
            if self.described is not None:  # (an unnamed batch's: as forward_batch.py batch_parse answers it)
                answer = extended_answer(answer, self.described)
            self.fwd.batch_steps.answer(answer, row)
        except Exception:  # a bug here costs this session's request, never the loop
            log.exception("%r: answering a batched insert failed", self.session)
            self.hand(b"")
            return
        if self.waiter is not None:
            self.at_rest = ANSWERED
            self.watcher.start(self.readable)  # (the client's next request)

    def line_up(self, took, data, go, args):
        """take_now() found no idle connection: in a full pool (took: (pool, target)), the request
        waits in its line (Queued) with the client's reads stopped; else why the greenlet takes it."""
        if not took or took is CHECK_DUE:
            return took or "no idle server connection that fits"
        pool, target = took
        queued = self.queued = Queued(self, pool, target, data, go, args)
        self.session.slot.wait_on(queued)
        self.watcher.start(self.hold)  # (its next request waits for this one: as a client's pipeline would)
        self.session.counters.queued()
        return None

    def dequeued(self, queued, server):
        """Its pool handed the waiting request a connection (a loop callback after the release)."""
        session = self.session
        if self.queued is not queued:  # (the session ended meanwhile: close())
            if server is not None:
                queued.pool.release(server)
            return
        slot, proxy = session.slot, session.proxy
        slot.wait_on(None)
        self.queued = None
        session.counters.waited(queued.started)
        try:
            if server is None:
                pass  # (a connection was closed: its room is this request's, to open one: the greenlet's)
            elif session.closing is not None or proxy.paused or proxy.suspended is not None:
                queued.pool.release(server)
            elif slot.take_from(queued.pool, server, queued.target):
                self.go_on(slot.lease, queued.data, queued.go, queued.args)
                if self.waiter is not None:
                    self.watcher.start(self.readable)  # (the client's next request)
                return
        except Exception:  # a bug here costs the request's way, never the loop
            log.exception("%r: a request waiting in line failed", session)
        self.hand(queued.data)  # (the greenlet takes it: it waits with the pool's rules, or PAUSE's)

    def refused(self, queued, error):
        """A cancel, or pool.acquire_timeout in line: the client gets the error the greenlet's wait
        would give (through its forwarder, as a stage's refusal)."""
        session = self.session
        if self.queued is not queued:
            return
        session.slot.wait_on(None)
        self.queued = None
        session.counters.waited(queued.started)
        session.route.take()  # (the aim is used up, as by a wait in the greenlet)
        self.fwd.premade = (None, StageResult.reject(error.sqlstate, error.message), None, "", b"")
        self.hand(queued.data)
