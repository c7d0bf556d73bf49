"""Batch INSERT coalescing (`[batch] enabled`, the spec's "automatic INSERT coalescing into
multi-row batches"): single-row INSERTs of many clients into one table become one multi-row
INSERT, one statement and one commit on one server connection.

A Batcher per (database, user, session settings, the text before the row, the text after it),
like group commit: a row goes at once when no batch of its batcher runs; while fewer than
IN_FLIGHT run, with the rows that arrive in the same turn of the loop (at its end: a batch's
clients send their next rows together once it is answered, and the first of them alone would be a
commit of its own); otherwise it waits for companions until one of them ends, at most
`max_delay_ms` (or until `max_rows`/`max_bytes` are reached). So a lone client is not slowed down, and under load the
batches grow to what arrives while the last ones commit. The batch runs as one autocommit statement, `INSERT INTO t (cols) VALUES (r1), (r2), ... [RETURNING
...]`; each client is answered only after its commit, with exactly its own `INSERT 0 1` (and its
own RETURNING row: rows come back in VALUES order). When the batch fails (a duplicate key, a
check, a bad value), nothing of it was stored: every row is then run alone, as its client sent
it, so only the failing client gets its error (e.g. 23505) and the others succeed.

A client's CancelRequest reaches its row wherever it waits (Row.set_exception, through
LeaseSlot.cancel as for a wait in a pool's line): a row not sent yet leaves its batch and gets
57014 at once; a row the server runs has the server cancel the statement, and the batch's other
rows then run one by one without it; a cancel that comes once the row committed is too late, as
in PostgreSQL.

Not batched: tables with BEFORE or INSTEAD OF row triggers on INSERT or INSERT rules (they may
skip or change rows, so the batch's rows would not map to its clients; checked in the catalog
once per table), and everything the stage (pipeline/stages/batch.py) leaves alone. Statement
triggers fire once per batch instead of once per row.

The usual batch goes from wherever it is decided (a loop callback, mostly) without a greenlet of
its own (`Batcher.send_now`, `Landing`): the primary ready, an idle connection of its pool that
carries the batch's settings and needs nothing done first, its table known to be batchable, no
query cache; its answer is read by the connection's read watcher and its rows answered there (with
reads split to standbys, the primary's WAL position is asked by a second Query sent with the
INSERT: it runs once the INSERT committed). Anything else, and a batch the server refuses (its
rows then run one by one), is `Batcher.flush`'s, in a greenlet.
"""
import logging
import time
import weakref

import gevent
from gevent.hub import Waiter, get_hub

from ..errors import CONNECTION_FAILURE, DECODING_ERRORS, INTERNAL_ERROR, BackendError, ProxyError
from ..pool import session_state
from ..pool.pool import CHECK_DUE
from ..protocol import codec, messages as m
from ..routing.router import WRITE_POSITION, Router
from ..speedups import read
from .shape import analyze, split

log = logging.getLogger(__name__)
UNBATCHABLE = ("SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = $1::regclass "
               "AND tgenabled <> 'D' AND NOT tgisinternal AND (tgtype & 7 = 7 OR tgtype & 69 = 69)"
               " UNION ALL SELECT pg_catalog.count(*) FROM pg_catalog.pg_rewrite "
               "WHERE ev_class = $1::regclass AND ev_type = '3'")
ONE_ROW = codec.message(m.COMMAND_COMPLETE, codec.cstr("INSERT 0 1"))
IN_FLIGHT = 2  # batches of one batcher running at once before rows wait for companions
SENT_AT_ONCE = 65536  # a larger batch's statement goes from a greenlet (flush): its sends may wait
WHERE_WAL_ENDS = codec.query(WRITE_POSITION)  # (Router.write_position's question)


class Row:
    """A client's row: its text, and its answer once its batch committed or failed (or its client
    canceled it): the bytes its client gets, set once (settle()); its waiter is then called with
    the row from a loop callback (the fast path's row_answered, or the switch of a greenlet's
    Waiter: Batches.wait)."""
    __slots__ = ("sql", "row", "answer", "waiter", "written", "placed", "batcher", "flight")

    def __init__(self, sql, row):
        self.sql, self.row, self.answer, self.waiter = sql, row, None, None
        self.placed = time.monotonic()  # (its client's transaction time, for the statistics)
        self.written = None  # the primary's WAL position past its batch's commit (read-your-writes), if asked
        self.batcher = None  # where it waits for companions (Batcher.add)
        self.flight = None   # its batch on its way, once it left the batcher (Flight)

    def ready(self):
        return self.answer is not None

    def set_exception(self, error):
        """Its client's CancelRequest (LeaseSlot.cancel, the session waiting on the row; error: a
        ProxyError, 57014)."""
        if self.answer is None and self.batcher is not None:
            self.batcher.cancel(self, codec.error_response(error.sqlstate, error.message))

    def leave(self):
        """Its client left before the answer (the fast path's waiting request): the row, sent as
        an autocommit INSERT, is inserted all the same; its answer goes nowhere."""


class Verdicts:
    """The catalog's verdict per (database, table), kept ttl seconds: asked for every row, so a
    dict and a clock (cachetools' TTLCache costs ~6x as much per lookup)."""
    __slots__ = ("ttl", "found")
    LIMIT = 4096

    def __init__(self, ttl):
        self.ttl, self.found = ttl, {}

    def get(self, key):
        found = self.found.get(key)
        return None if found is None or found[1] < time.monotonic() else found[0]

    def set(self, key, ok):
        if len(self.found) >= self.LIMIT:
            self.found.clear()
        self.found[key] = (ok, time.monotonic() + self.ttl)


class Batches:
    """Every Batcher of the proxy, and what the stage asks: may this query wait for a batch?"""

    def __init__(self, proxy):
        self.proxy = proxy
        self.batchers = {}
        self.shapes = {}                     # skeleton or text -> Insert or None
        self.tables_ok = Verdicts(ttl=60)  # (database, table) -> batchable in the catalog
        # sent_at_once: batches sent without a greenlet of their own (Batcher.send_now), the usual
        self.counts = {"batches": 0, "rows": 0, "fallbacks": 0, "errors": 0, "passed_through": 0, "sent_at_once": 0}
        self.sizes = [0] * 12                # rows per batch: 1, 2-3, 4-7, ... (powers of two)
        self.off = weakref.WeakSet()         # sessions that used lastval()/currval(): never batched
        self.anyone_off = False              # (any ever: a WeakSet's size is a Python call)

    def waiting(self, database=None):
        """How many rows (of database) wait for companions: transactions PAUSE and SUSPEND wait
        for (a batch under way is the proxy's own work: own_work.py)."""
        return sum(len(b.pending) for b in list(self.batchers.values()) if database in (None, b.database))

    def never(self, session):
        """session used lastval() or currval(): its INSERTs are never batched (a batched row is
        inserted on another server connection, so its sequence values would not be the session's)."""
        self.off.add(session)
        self.anyone_off = True

    def extended_row(self, session, sql, row_with):
        """(batcher, Row) for an extended-protocol INSERT whose parameters row_with(row) made literals."""
        return self.place(session, sql, sql, row_with)

    @staticmethod
    def wait(batcher, row):
        """Until row's batch committed (or failed, or its client canceled it), in a greenlet: the
        row, its answer in row.answer."""
        waiter = Waiter()
        batcher.add(row, waiter.switch)
        waiter.get()
        return row

    def allows(self, session):
        """Whether session's INSERT may wait for a batch now: a pooled session outside any
        transaction, owing nothing, its settings known; not a tenant's (a batch runs on one
        connection: one tenant's proof), nor one that used lastval()/currval(); and no PAUSE
        (the INSERT takes the usual way: it waits for RESUME as any transaction)."""
        identity = session.identity
        return (not self.proxy.paused and identity.pooled and session.slot.lease is None and not session.slot.pinned
                and identity.tenant is None and session.settings.checked and not session.plan.owes()
                and not (self.anyone_off and session in self.off))

    def place(self, session, sql, key, row_of=None):
        """(batcher, Row) for a batchable text of a session that may wait for it now, or None.
        row_of(row) may rewrite the row text (or refuse it: None); a rewritten row's client text,
        run alone, is the INSERT with that row."""
        if not self.allows(session):
            return None
        cfg = self.proxy.config.batch
        shape = self.shapes.get(key, False)
        if shape is False:
            if len(self.shapes) > 20000:
                self.shapes.clear()
            shape = self.shapes[key] = analyze(sql, cfg.tables)
        if shape is None:
            return None
        if self.tables_ok.get((session.identity.database, shape.table)) is False:
            self.counts["passed_through"] += 1
            return None
        # Texts of one shape share their text around the row (no literal there): cut it out at
        # once; the scanner reads a text that does not start and end like the last one.
        known = shape.around
        if known is not None and sql.startswith(known[0]) and sql.endswith(known[2]) and (
                len(sql) > known[3]):
            prefix, suffix = known[0], known[1]
            row = sql[len(prefix):len(sql) - len(known[2])]
        else:
            parts = split(sql)
            if parts is None:
                return None
            prefix, row, suffix = parts
            tail = sql[len(prefix) + len(row):]
            shape.around = (prefix, suffix, tail, len(prefix) + len(tail))
        if row_of is not None:
            row = row_of(row)
            if row is None:
                return None
            sql = prefix + row + suffix
        bkey = (session.identity.database, session.identity.user, session.settings.key, prefix, suffix)
        batcher = self.batchers.get(bkey)
        if batcher is None:
            batcher = self.batchers[bkey] = Batcher(self, session, shape, prefix, suffix)
        return batcher, Row(sql, row)

    def state(self):
        return {**self.counts, "batchers": len(self.batchers),
                "rows_per_batch": {f"{1 << i}-{(2 << i) - 1}" if i else "1": n for i, n in enumerate(self.sizes) if n}}


class Flight:
    """One batch on its way (Batcher.flush): its server connection, the rows the server runs now,
    the rows whose answers stand (committed, or their own errors) and the rows canceled. It is
    the proxy's own work while it flies (own_work.py)."""
    __slots__ = ("conn", "running", "answered", "canceled")

    def __init__(self):
        self.conn, self.running, self.answered, self.canceled = None, (), set(), {}

    def cancel(self, row, error):
        if row in self.answered:
            return  # (too late: committed, or its own error; its answer goes out as it is)
        self.canceled[row] = error
        if row in self.running:  # the server decides: the batch fails with 57014, or it committed
            if self.conn is not None and not self.conn.broken:
                self.conn.cancel()
        else:  # not sent, and it never will be
            settle((row,), (error,))

    def run(self, conn, rows, sql):
        """The server's messages for sql, which inserts rows (a cancel of theirs meanwhile reaches it)."""
        self.running = rows
        try:
            return run(conn, sql)
        finally:
            self.running = ()


class Batcher:
    def __init__(self, batches, session, shape, prefix, suffix):
        self.batches, self.proxy = batches, batches.proxy
        self.database, self.table, self.returning = session.identity.database, shape.table, shape.returning
        self.credentials, self.settings = session.slot.pool.credentials, dict(session.settings.values)
        self.settings_key = session.settings.key
        self.prefix, self.suffix = prefix, suffix
        self.pending, self.pending_bytes, self.timer, self.in_flight = [], 0, None, 0
        self.soon = None  # the loop callback that sends what arrived in this turn (a batch running)

    def add(self, row, waiter):
        """row joins the batch; waiter(row) is called once it is answered (settle())."""
        cfg = self.proxy.config.batch
        row.batcher, row.waiter = self, waiter
        self.pending.append(row)
        self.pending_bytes += len(row.row)
        if self.in_flight == 0 or len(self.pending) >= cfg.max_rows or self.pending_bytes >= cfg.max_bytes:
            self._go()
        elif self.in_flight < IN_FLIGHT:
            if self.soon is None:
                self.soon = gevent.get_hub().loop.run_callback(self._go)
        elif self.timer is None:  # (a loop timer: no greenlet to make, switch to and kill per batch)
            self.timer = gevent.get_hub().loop.timer(cfg.max_delay_ms / 1000.0)
            self.timer.start(self._go)

    def _go(self):
        rows, self.pending, self.pending_bytes = self.pending, [], 0
        if self.soon is not None:
            self.soon.stop()
            self.soon = None
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        if rows:
            self.in_flight += 1
            flight = Flight()
            self.proxy.own_work.begin(flight, self.database)
            for row in rows:
                row.flight = flight
            if not self.send_now(rows, flight):
                gevent.spawn(self.flush, rows, flight)

    def send_now(self, rows, flight):
        """Send the usual batch at once, without waiting (the module's docstring says when); its
        answer comes to a Landing. False: flush() must do it."""
        proxy = self.proxy
        if proxy.cache is not None or self.batches.tables_ok.get((self.database, self.table)) is not True:
            return False
        data = codec.query(self.prefix + ", ".join(row.row for row in rows) + self.suffix)
        if proxy.router.on:  # (read-your-writes: where the WAL ends once it committed, as _written asks)
            data += WHERE_WAL_ENDS
        node = proxy.buffer.ready()
        if node is None or len(data) > SENT_AT_ONCE:
            return False
        pool = proxy.pools.get(node, self.database, self.credentials)
        conn = pool.take_idle(in_loop=True)
        if conn is None or conn is CHECK_DUE:
            return False
        if conn.settings_key != self.settings_key or conn.raw is None:  # (raw None: TLS, a greenlet's)
            pool.release(conn)
            return False
        flight.conn, flight.running = conn, rows
        proxy.own_work.on(flight, conn)
        self.batches.counts["sent_at_once"] += 1
        Landing(self, pool, conn, rows, flight, 2 if proxy.router.on else 1).send(data)
        return True

    def flown(self, flight):
        """A batch of this batcher ended (its rows answered): what waits for companions goes if it
        may. The flight lets its rows go (each row holds its flight: a cycle the collector would
        otherwise free, ~2,000 instructions a row)."""
        self.proxy.own_work.end(flight)
        flight.running = ()
        flight.answered.clear()
        flight.canceled.clear()
        self.in_flight -= 1
        if self.pending and self.in_flight < IN_FLIGHT:
            self._go()  # (what arrived meanwhile: at once)

    def cancel(self, row, error):
        """row's client canceled it (Row.set_exception): out of the batch with error if it still
        waits for companions, else its flight's."""
        if row in self.pending:
            self.pending.remove(row)
            self.pending_bytes -= len(row.row)
            settle((row,), (error,))
        elif row.flight is not None:
            row.flight.cancel(row, error)

    def flush(self, rows, flight, pool=None, conn=None):
        """Run rows as one statement (or, after a failure, one by one); answer every client. pool,
        conn: a batch sent at once (Landing) that the server refused: its rows one by one on conn."""
        try:
            self._flush(rows, flight, pool, conn)
        finally:
            self.flown(flight)

    def _flush(self, rows, flight, pool, conn):
        proxy, ok = self.proxy, False
        try:
            if conn is not None:
                self.batches.counts["fallbacks"] += 1
                answers = self._one_by_one(conn, rows, flight)
            else:
                node = proxy.buffer.primary(time.monotonic() + proxy.config.failover.buffer_timeout)
                pool = proxy.pools.get(node, self.database, self.credentials)
                conn = flight.conn = pool.acquire()
                proxy.own_work.on(flight, conn)
                session_state.apply(conn, self.settings, self.settings_key)
                if not self._table_ok(conn):
                    self.batches.counts["passed_through"] += len(rows)
                    answers = self._one_by_one(conn, rows, flight)
                else:
                    answers = self._together(conn, rows, flight)
                    if answers is None:
                        self.batches.counts["fallbacks"] += 1
                        answers = self._one_by_one(conn, rows, flight)
            ok = True
            settle(rows, answers, self._written(conn))
        except (ProxyError, OSError) as e:
            self.failed(rows, e)
        finally:
            if conn is not None:
                pool.release(conn, reusable=ok and conn.tx_status == m.TX_IDLE and not conn.broken)
            if proxy.cache is not None:  # (writes invalidate again once committed)
                proxy.cache.invalidate_writes(self.database, [self.table.rpartition(".")[2]])

    def failed(self, rows, e):
        """The batch's connection failed (e): whether it committed is not known."""
        self.batches.counts["errors"] += 1
        log.warning("batched insert into %s of %d rows failed: %s", self.table, len(rows), e)
        error = codec.error_response(getattr(e, "sqlstate", CONNECTION_FAILURE) or CONNECTION_FAILURE,
                                     f"batched insert failed: {getattr(e, 'message', e)}; it may or may not "
                                     "have been committed")
        settle(rows, [error] * len(rows))

    def _written(self, conn):
        """Where the primary's WAL ends after the batch's commit, when reads go to standbys: each
        row's client reads its write back (read-your-writes), as after a lease on the primary."""
        router = self.proxy.router
        if not router.on:
            return None
        try:
            return router.write_position(conn)
        except (ProxyError, OSError) as e:  # (committed all the same: the answers go out)
            log.warning("the WAL position after a batched insert into %s is unknown (%s): its clients' "
                        "next reads may miss it on a standby", self.table, e)
            return None

    def _table_ok(self, conn):
        key = (self.database, self.table)
        ok = self.batches.tables_ok.get(key)
        if ok is None:
            _, counts, _ = conn.fetch(UNBATCHABLE, [self.table])
            ok = not any(int(c[0]) for c in counts)
            self.batches.tables_ok.set(key, ok)
            if not ok:
                log.info("table %s has INSERT row triggers or rules: its inserts are not batched", self.table)
        return ok

    def _together(self, conn, rows, flight):
        """One multi-row INSERT: each row's answer, or None (nothing stored) when the server refused it
        (or a client's cancel stopped it)."""
        canceled = flight.canceled
        live = [row for row in rows if row not in canceled] if canceled else rows
        if not live:
            return [canceled[row] for row in rows]
        messages = flight.run(conn, live, self.prefix + ", ".join(r.row for r in live) + self.suffix)
        if any(mtype == m.ERROR_RESPONSE for mtype, _ in messages):
            return None
        flight.answered.update(live)
        if live is not rows:  # (the rows canceled before it went: their errors, in their places)
            answers = dict(zip(live, self._answers(messages, live)))
            return [answers[row] if row in answers else canceled[row] for row in rows]
        return self._answers(messages, rows)

    def _answers(self, messages, rows):
        """Each row's answer from the multi-row INSERT's messages."""
        described = next((codec.message(mtype, body) for mtype, body in messages if mtype == m.ROW_DESCRIPTION), b"")
        data = [codec.message(mtype, body) for mtype, body in messages if mtype == m.DATA_ROW]
        tag = next((codec.read_cstr(body, 0)[0] for mtype, body in messages if mtype == m.COMMAND_COMPLETE), "")
        if tag != f"INSERT 0 {len(rows)}" or (self.returning and len(data) != len(rows)):
            error = codec.error_response(INTERNAL_ERROR, f"batched insert: the server answered {tag!r} for "
                                                         f"{len(rows)} rows; they may have been stored")
            self.batches.counts["errors"] += 1
            return [error] * len(rows)
        counts = self.batches.counts
        counts["batches"] += 1
        counts["rows"] += len(rows)
        self.batches.sizes[min(len(rows).bit_length() - 1, 11)] += 1
        return [described + one + ONE_ROW for one in data] if self.returning else [ONE_ROW] * len(rows)

    def _one_by_one(self, conn, rows, flight):
        """Each row as its client sent it, alone: each gets exactly its own answer or error (a row
        canceled before its turn: the cancel's)."""
        # (canceled while their batch ran: answered at once, they wrote nothing; the rows run
        # here may wait long)
        settle(flight.canceled.keys(), flight.canceled.values())
        answers = []
        try:
            for row in rows:
                canceled = flight.canceled.get(row)
                if canceled is not None:
                    answers.append(canceled)
                    continue
                answers.append(b"".join(codec.message(mtype, body) for mtype, body in flight.run(conn, (row,), row.sql)
                                        if mtype != m.PARAMETER_STATUS))
                flight.answered.add(row)
        except (ProxyError, OSError):
            settle(rows, answers)  # (these committed: their own answers; zip stops at the last)
            raise
        return answers


class Landing:
    """A batch sent at once (Batcher.send_now) on its way back: the connection's read watcher reads
    the server's answer up to its ReadyForQuery and answers the rows, in loop callbacks. A refusal
    (any ErrorResponse: a bad row, a client's cancel) goes to Batcher.flush, its rows one by one
    on the same connection."""
    __slots__ = ("batcher", "pool", "conn", "rows", "flight", "messages", "answers", "ended")

    def __init__(self, batcher, pool, conn, rows, flight, answers=1):
        self.batcher, self.pool, self.conn, self.rows, self.flight = batcher, pool, conn, rows, flight
        self.messages = []    # (type, body) but the ReadyForQuery messages, as run() returns them
        self.answers = answers  # the Query messages sent: the INSERT, and the WAL position's when asked
        self.ended = []       # where in messages each answer ended (its ReadyForQuery)

    def send(self, data):
        conn = self.conn
        conn.unnamed_owner = None
        conn.watch(self.readable)
        conn.send_now(data)  # (a send that fails: the read watcher sees the connection's end)

    def readable(self):
        conn = self.conn
        try:
            try:
                data = read(conn.raw.fileno())
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                raise BackendError(f"server {conn.node.name} closed the connection unexpectedly",
                                   sqlstate=CONNECTION_FAILURE)
            rbuf = conn.rbuf
            rbuf.feed(data)
            while True:
                message = rbuf.next_message()
                if message is None:
                    return
                if message[0] == m.READY_FOR_QUERY:
                    conn.tx_status = message[1]
                    self.ended.append(len(self.messages))
                    if len(self.ended) == self.answers:
                        break
                    continue
                self.messages.append(message)
        except (ProxyError, OSError) + DECODING_ERRORS as e:
            return self.lost(e)
        conn.on_readable = None
        self.landed()

    def landed(self):
        batcher, rows, flight, conn = self.batcher, self.rows, self.flight, self.conn
        flight.running = ()
        messages = self.messages[:self.ended[0]]
        if any(mtype == m.ERROR_RESPONSE for mtype, _ in messages):  # (nothing stored: one by one)
            gevent.spawn(batcher.flush, rows, flight, self.pool, conn)
            return
        try:
            flight.answered.update(rows)
            settle(rows, batcher._answers(messages, rows), self.written())
        finally:
            self.pool.release(conn, reusable=conn.tx_status == m.TX_IDLE and not conn.broken)
            batcher.flown(flight)

    def written(self):
        """The WAL position the second answer told (Batcher._written's), or None."""
        if self.answers < 2:
            return None
        position = [body for mtype, body in self.messages[self.ended[0]:] if mtype == m.DATA_ROW]
        try:
            return Router.position_of([v.decode() for v in codec.parse_data_row(position[0])])
        except (AttributeError,) + DECODING_ERRORS as e:  # (an error answered instead, or a NULL)
            log.warning("the WAL position after a batched insert into %s is unknown (%s): its clients' "
                        "next reads may miss it on a standby", self.batcher.table, e)
            return None

    def lost(self, error):
        conn = self.conn
        conn.on_readable = None
        conn.broken = True
        try:
            self.batcher.failed(self.rows, error)
        finally:
            self.pool.release(conn, reusable=False)
            self.batcher.flown(self.flight)


def settle(rows, answers, written=None):
    """Each row its answer (bytes; a row answered already keeps its own: a cancel's) and where
    the WAL ended past its commit (written), then the rows' waiters, all from one loop callback:
    never in the caller's greenlet or callback (a cancel's greenlet, a batch's Landing)."""
    woken = []
    for row, answer in zip(rows, answers):
        if row.answer is None:
            row.written, row.answer = written, answer
            if row.waiter is not None:
                woken.append(row)
    if woken:
        get_hub().loop.run_callback(wake, woken)


def wake(rows):
    for row in rows:
        waiter, row.waiter = row.waiter, None
        try:
            waiter(row)
        except Exception:  # (a bug in one waiter costs its own client, not the others of the batch)
            log.exception("answering the batched row %r failed", row.row[:80])


def run(conn, sql):
    """The server's messages for one simple Query, up to (not with) its ReadyForQuery."""
    conn.unnamed_owner = None
    conn.send(codec.query(sql))
    out = []
    while True:
        mtype, body = conn.read_message()
        if mtype == m.READY_FOR_QUERY:
            conn.tx_status = bytes(body)
            return out
        out.append((mtype, bytes(body)))
