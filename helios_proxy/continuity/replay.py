"""Failover replay (the spec's failover_replay, with session migrate and the commit in doubt): a
session whose server connection died with its node goes on, unnoticed, on the new primary.

When a lease's connection is lost (relay.lost) and the session has a replayable journal
(continuity/journal.py), `recover` asks whether the node is down (a fresh connection to it fails),
waits in the switchover buffer for a confirmed primary, opens a connection there, re-creates the
session's state (pool/session_state.py settings, prepared statements: the code transaction
pooling uses at every lease), then:

- a COMMIT in flight is in doubt: its xid (asked by `ask_xid` in the same flight, just before it) is
  looked up with txid_status() on the new primary. Committed: the COMMIT is answered as the new
  primary answers a COMMIT outside a transaction (minus its 25P01 warning); otherwise the
  transaction is re-run. Without a known xid (a COMMIT pipelined behind other requests, an
  autocommit write in flight) the outcome cannot be known: 08007, never a blind re-run.
- otherwise the journal's bytes are sent again; the first `seen` bytes of the new answer must
  have the checksum of what the client got (else 40001: `now()`, `nextval`, rows another client
  changed), and the bytes after them continue the client's stream where it stopped. Cursors come
  back the same way: their DECLARE and FETCHes are in the journal, so the next FETCH continues.

`replay.replay_attempts` bounds the tries (a new primary that dies too); a replay never goes to a
node the tracker does not confirm as primary (the old primary coming back is fenced there).
"""
import logging
import time

import gevent

from ..errors import (
    SERIALIZATION_FAILURE, TRANSACTION_RESOLUTION_UNKNOWN as RESOLUTION_UNKNOWN, BackendError, ProxyError,
    node_unreachable)
from ..backend.connection import ServerConnection
from ..pool import session_state
from ..protocol import codec, messages as m
from ..protocol.framing import StreamScanner
from ..routing.classify import BEGIN_READ_ONLY, READ
from ..frontend import relay  # (relay imports this module too: only its functions are used, at run time)
from . import session_migrate
from .journal import STATS, UNKNOWN, new_digest
from ..topology.switchover_buffer import NoPrimary

log = logging.getLogger(__name__)
Q, P, B, S, F = (ord(c) for c in "QPBSF")
READY, NOTICE = ord("Z"), ord("N")
SAFE_WORDS = frozenset(("begin", "start", "rollback", "abort", "set", "reset", "show", "fetch", "move", "close",
                        "declare", "savepoint", "release", "prepare", "deallocate", "discard", "listen",
                        "unlisten"))
COMMIT_WORDS = frozenset(("commit", "end"))
# What fails a server's transaction block when the proxy gives an error inside it (Forwarder.fail_block),
# or again after a replay (replay(fail=True)).
FAIL_BLOCK_SQL = ("DO $helios$BEGIN RAISE EXCEPTION 'helios-proxy: a request of this transaction was refused by "
                  "the proxy'; END$helios$")
XID_QUERY = codec.query("SELECT pg_catalog.txid_current_if_assigned(), pg_catalog.pg_current_wal_insert_lsn()")
BEGIN_QUERY, COMMIT_QUERY = codec.query("BEGIN"), codec.query("COMMIT")


class Mismatch(Exception):
    """The replay answered differently from what the client already received."""


class InDoubt(Exception):
    """A write in flight whose outcome cannot be known."""


def walk(data):
    """(type, start, end) of each whole message in data (bytes the proxy sent a server)."""
    pos, n = 0, len(data)
    while pos + 5 <= n:
        end = pos + 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
        yield data[pos], pos, end
        pos = end


# --- before a COMMIT goes out -----------------------------------------------------------------------
def ask_xid(session, how):
    """A COMMIT goes out next (how: "lone", or "mixed" among other statements): ask the server for
    the transaction's xid first, in the same flight (its answer is cut out of the client's stream,
    plan.py HIDDEN, and sets journal.xid), so that the COMMIT, if in flight when the primary dies,
    can be looked up instead of guessed. It stays UNKNOWN for a mixed one and when answers are
    owed (it could not be asked in order); None without a transaction (nothing to commit)."""
    plan, server, journal = session.plan, session.server, session.journal
    journal.commit_next(UNKNOWN)
    if how != "lone" or plan.owes():
        return
    if server.tx_status == m.TX_IDLE:
        journal.xid = None
        return
    plan.expect_hidden(journal.xid_row)
    journal.note_asked()
    send_hidden(server, XID_QUERY)  # (if the server is gone, the COMMIT never ran there)


def wraps(session):
    """Whether a lone write going out now on the session's server gets a transaction of its own:
    only outside a transaction block, with nothing owed, while the journal can replay."""
    return (not session.plan.owes() and session.server.tx_status == m.TX_IDLE
            and session.journal.why_not() is None)


def wrap_begin(session, forwarder, at):
    """A lone write is about to go out: if it runs outside a transaction block, it gets one of its
    own (a hidden BEGIN now; wrap_end: the xid and COMMIT after it, in the same flight), so that
    the proxy knows its xid before it commits. True if wrapped."""
    if not wraps(session):
        return False
    plan, server, journal = session.plan, session.server, session.journal
    forwarder.cut(at, at)
    journal.note_wrapped()
    plan.expect_hidden()
    send_hidden(server, BEGIN_QUERY)
    return True


def wrap_end(session):
    plan = session.plan
    plan.expect_hidden(session.journal.xid_row)
    session.journal.note_asked()
    plan.expect_hidden(final=True)  # its ReadyForQuery is the client's
    send_hidden(session.server, XID_QUERY + COMMIT_QUERY)


def send_hidden(server, data):
    """A Query of the proxy's own (its answer cut: plan.expect_hidden, the caller's)."""
    server.unnamed_owner = None  # (a Query of the proxy's: the client's unnamed statement is gone there)
    try:
        server.send(data)
    except BackendError:
        pass  # the server is gone: its pump sees it


def snapshot(session):
    """Session pooling: read the session's state from its server now (it is idle, nothing owed),
    as of the journal that starts here (continuity/session_migrate.py)."""
    with session.slot.lease.borrow() as server:
        try:
            session.journal.snapshot = session_migrate.capture(server)
            session.journal.needs_snapshot = False
        except (BackendError, OSError) as e:
            log.info("%r: reading its session state failed (%s)", session, e)


# --- after a loss --------------------------------------------------------------------------------
def recover(session, lease, stream):
    """The lease's server connection is lost. True: the session goes on (on a new server, or with
    an error for the request in flight); False: not replayable, the caller ends it as before."""
    journal = session.journal
    if journal is None or session.closing is not None or session.identity.home is not None:
        return False
    why = journal.why_not() or (session.slot.pinned and f"it is pinned ({session.slot.pinned})")
    if why:
        STATS.not_replayable += 1
        log.info("%r: not replayed: %s", session, why)
        return False
    old = lease.server
    if node_alive(session, old, lease.target):
        return False  # its backend ended (terminated, timed out), not its node: as before
    cfg = session.proxy.config.replay
    started = time.monotonic()
    deadline = started + session.proxy.config.failover.buffer_timeout
    for attempt in range(1, cfg.replay_attempts + 1):
        try:
            pool, server = primary_by(session, deadline)
        except ProxyError as e:
            log.warning("%r: no primary to replay on: %s", session, e.message)
            break
        try:
            with gevent.Timeout(cfg.timeout, TimeoutError):
                rest = rerun(session, lease, server)
        except (Mismatch, InDoubt) as e:
            code = SERIALIZATION_FAILURE if isinstance(e, Mismatch) else RESOLUTION_UNKNOWN
            pool.release(server, reusable=False)
            return give_error(session, lease, stream, code, str(e))
        except (BackendError, OSError, TimeoutError) as e:
            log.warning("%r: replay %d on %s failed: %s", session, attempt, server.node.name, e)
            pool.release(server, reusable=False)
            continue
        if session.slot.lease is not lease:  # the client left meanwhile (its session ended)
            pool.release(server, reusable=False)
            return True
        switch(session, lease, pool, server)
        STATS.replayed += 1
        log.info("%r: replayed on %s in %.2f s (%d bytes of requests)", session, server.node.name,
                 time.monotonic() - started, journal.size)
        relay.resume(session, lease, stream, rest)
        return True
    STATS.failed += 1
    return False


def primary_by(session, deadline):
    """(pool, server) on the primary: waits in the switchover buffer for a confirmed one, and while
    the one it knows cannot be reached (a restart, with no standby to fail over to) tries again
    until deadline (failover.buffer_timeout)."""
    while True:
        try:
            return session.slot.acquire_primary()
        except ProxyError as e:  # (NoPrimary: none known, no standby to fail over to: it may come back)
            if not (node_unreachable(e) or isinstance(e, NoPrimary)) or time.monotonic() >= deadline:
                raise
            gevent.sleep(0.2)


def node_alive(session, server, target):
    """Whether the lost connection's node still serves as it did (a fresh connection to it works,
    and a primary is still one): then only its backend ended, and nothing is replayed. (A read on
    a standby that died is replayed on the primary.)"""
    config = session.proxy.config
    probe = ServerConnection(server.node, server.database, server.credentials, config)
    try:
        probe.connect(connect_timeout=min(2.0, config.pool.connect_timeout))
        in_recovery = probe.execute("SELECT pg_catalog.pg_is_in_recovery()")[0][0] == "t"
        return target == "standby" or not in_recovery
    except (BackendError, OSError):
        return False
    finally:
        probe.close()


def rerun(session, lease, server):
    """Re-create the session on server and re-run its journal; the bytes of the answer beyond what
    the client already has. Raises Mismatch, InDoubt, BackendError/OSError (try again)."""
    journal = session.journal
    session.plan.forget_hidden()  # (the lost server owed them)
    sent = journal.sent()
    parsed = {statement_name(sent, s, e) for t, s, e in walk(sent) if t == P} - {""}
    session_migrate.restore(session, server, None if session.identity.pooled else journal.snapshot, parsed)
    start = in_flight(journal, sent)
    if journal.xid is UNKNOWN and journal.asked and (journal.eof or journal.fatal):
        # Its xid was asked just before the COMMIT and never answered, and the server closed the
        # connection cleanly or said FATAL instead: a backend answers (and flushes) each Query
        # before it reads the next, so the COMMIT never ran there.
        journal.xid = None
    if journal.wrapped:  # a lone write the proxy wrapped in a transaction: its hidden COMMIT in doubt
        if outcome(server, journal.xid, "a write outside a transaction block"):
            STATS.in_doubt_committed += 1
            return codec.ready_for_query(m.TX_IDLE)  # its answer came; only its ReadyForQuery did not
        return replay_wrapped(session, server, sent)
    if lease.server.tx_status == m.TX_FAILED:  # (before the COMMIT's question: a failed block commits nothing)
        return replay(session, server, sent[:start], fail=True)
    if journal.commit_from is not None and journal.commit_from >= start:  # a COMMIT not answered
        if outcome(server, journal.xid, "a COMMIT"):
            STATS.in_doubt_committed += 1
            return answer_committed(server, sent[journal.commit_from:], journal.seen - journal.ready_seen)
        STATS.in_doubt_replayed += 1
    elif (lease.target == "primary" and (journal.readies == 0 or lease.server.tx_status == m.TX_IDLE)
          and writes(session, sent, start)):
        outcome(server, UNKNOWN, "a write outside a transaction block")
    return replay(session, server, sent)


def replay(session, server, sent, fail=False):
    """Send the journal again; check the answer against what the client got; return the rest.
    fail: the lost server's transaction block had failed (an error, the server's or the proxy's:
    Forwarder.fail_block): sent is what was answered; should the replay leave the block going (a
    transient error that did not recur, the proxy's refusal, which is not in the journal), it is
    failed again before the requests in flight follow, so that they get what a failed block
    answers (25P02; a COMMIT rolls back), as on the lost server, and nothing of it commits."""
    journal = session.journal
    check = session.proxy.config.replay.checksum
    server.sock.sendall(sent)
    owed = requests(sent)
    scanner = StreamScanner((READY,))
    digest = new_digest()
    want, got, readies, status = journal.seen, 0, 0, m.TX_IDLE
    tail = b""
    while True:
        if got >= want and readies >= min(journal.readies, owed):
            break
        data = server.sock.recv(1 << 16)
        if not data:
            raise BackendError(f"server {server.node.name} closed the connection during the replay")
        for mtype, body, end in scanner.feed(data):
            readies += 1
            status = body
            if got + end <= want and readies > journal.readies:
                raise Mismatch("the replay after a failover answered differently (fewer results)")
        take = min(len(data), want - got)
        if take > 0:
            digest.update(memoryview(data)[:take])
            got += take
        tail = data[take:] if take < len(data) else b""
        if got >= want:
            if check and digest.digest() != journal.checksum():
                raise Mismatch("the transaction was interrupted by a failover and its replay on the new "
                               "primary answered differently")
            if tail or readies >= owed:
                break
        if readies >= owed and got < want:
            raise Mismatch("the replay after a failover answered differently (a shorter answer)")
    if fail and status == m.TX_IN_BLOCK:
        try:
            server.execute(FAIL_BLOCK_SQL)
        except BackendError:
            if server.broken:
                raise
            status = m.TX_FAILED
    if fail and status != m.TX_FAILED:
        raise Mismatch("the transaction block had failed and its replay after a failover could not fail it again")
    server.tx_status = status
    # What the client sent while the replay ran went to the lost server: send it here too.
    more = journal.sent()[len(sent):] if journal.size > len(sent) else b""
    if journal.over:
        raise Mismatch("the transaction outgrew replay.max_journal_bytes during its replay")
    if more:
        server.sock.sendall(more)
    return tail


def replay_wrapped(session, server, sent):
    """A wrapped lone write that had not committed: run again in a transaction of its own, and
    committed only if it answers as it did (else rolled back: 40001, nothing happened); what the
    client does not have yet of its answer, with the ReadyForQuery of a write outside a block."""
    journal = session.journal
    if requests(sent) != 1:
        STATS.unresolved += 1
        raise InDoubt("the connection to the primary was lost while a write outside a transaction block "
                      "(with more requests behind it) was in flight; whether it committed cannot be known")
    server.execute("BEGIN")
    answer = b"".join(answer_of(server, sent))
    body, seen = answer[:-6], journal.seen
    digest = new_digest()
    digest.update(body[:seen])
    if len(body) < seen or session.proxy.config.replay.checksum and digest.digest() != journal.checksum():
        server.execute("ROLLBACK")
        raise Mismatch("the write was interrupted by a failover and its replay on the new primary answered "
                       "differently (it was not committed)")
    try:
        server.execute("COMMIT")
    except BackendError as e:
        if server.broken:
            raise
        raise Mismatch(f"the write was interrupted by a failover and its replay could not commit: {e.message}")
    STATS.in_doubt_replayed += 1
    return body[seen:] + codec.ready_for_query(m.TX_IDLE)


def answer_committed(server, tail, already):
    """The COMMIT in flight had committed: the new primary answers the same messages outside a
    transaction (a COMMIT there says 'COMMIT' plus a 25P01 warning, dropped here); the client gets
    what it does not have yet of that answer."""
    return b"".join(message for message in answer_of(server, tail)
                    if not (message[0] == NOTICE and b"C25P01\0" in message))[already:]


def answer_of(server, data):
    """Send data (whole requests) to server; its answer, message by message, up to the
    ReadyForQuery of the last Query/Sync/FunctionCall in data."""
    server.sock.sendall(data)
    owed, messages, buf = requests(data), [], b""
    while owed:
        chunk = server.sock.recv(1 << 16)
        if not chunk:
            raise BackendError(f"server {server.node.name} closed the connection during the replay")
        buf += chunk
        pos = 0
        for mtype, start, end in walk(buf):
            if end > len(buf):
                break
            messages.append(buf[start:end])
            pos = end
            if mtype == READY:
                server.tx_status = buf[end - 1:end]
                owed -= 1
        buf = buf[pos:]
    return messages


def requests(data):
    """How many ReadyForQuery messages the requests in data get (one per Query, Sync, FunctionCall)."""
    return sum(1 for t, _, _ in walk(data) if t in (Q, S, F))


def outcome(server, xid, what):
    """Whether the transaction in doubt committed (xid: journal.xid); InDoubt when that cannot be
    known."""
    if xid is UNKNOWN:
        STATS.unresolved += 1
        raise InDoubt(f"the connection to the primary was lost while {what} was in flight; whether it "
                      "committed cannot be known")
    return xid is not None and committed(server, xid)


def committed(server, xid):
    """Whether the transaction (xid, WAL position before its commit) committed, asked of the new
    primary. Its txid_status() is trusted only if the new primary replayed the old one's WAL at
    least up to that position: then it saw the xid, and cannot have given it to a transaction of
    its own since. A new primary that stopped replaying before it cannot have the commit either.
    Raises InDoubt when that cannot be told (a node that came back without archive recovery)."""
    xid, lsn = xid
    row = server.execute(f"SELECT pg_catalog.pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")[0]
    if row[0] is None:
        STATS.unresolved += 1
        raise InDoubt("the connection to the primary was lost while a COMMIT was in flight, and the "
                      "server it came back on cannot tell whether it committed")
    if row[0] != "t":
        return False  # it never saw all of the transaction's records, nor its commit after them
    return server.execute(f"SELECT pg_catalog.txid_status({int(xid)})")[0][0] == "committed"


def in_flight(journal, sent):
    """Offset in sent of the first request not answered yet (each Query/Sync/FunctionCall gets
    one ReadyForQuery; journal.readies of them came)."""
    left = journal.readies
    for mtype, start, end in walk(sent):
        if left == 0:
            return start
        if mtype in (Q, S, F):
            left -= 1
    return len(sent)


def statement_name(sent, start, end):
    return codec.read_cstr(sent[start + 5:end], 0)[0]


def writes(session, sent, start):
    """Whether the requests from sent[start:] may write outside a transaction block (autocommit)."""
    classifier = session.proxy.router.classifier
    texts = statement_texts(session, sent)
    unnamed = None
    for mtype, s, e in walk(sent):
        body = sent[s + 5:e]
        if mtype == P:
            name, pos = codec.read_cstr(body, 0)
            text = codec.read_cstr(body, pos)[0]
            if name == "":
                unnamed = text
        if s < start:
            continue
        if mtype == Q:
            text = codec.read_cstr(body, 0)[0]
        elif mtype == B:
            portal, pos = codec.read_cstr(body, 0)
            name = codec.read_cstr(body, pos)[0]
            text = unnamed if name == "" else texts.get(name)
        elif mtype == F:
            return True
        else:
            continue
        if text is None or not safe(classifier, text, session.identity.database):
            return True
    return False


def safe(classifier, text, database):
    word = text.lstrip().split(None, 1)[0].lower().rstrip(";") if text.strip() else ""
    if word in SAFE_WORDS and ";" not in text.strip().rstrip(";"):
        return True
    return classifier.classify(text, database) in (READ, BEGIN_READ_ONLY)


def statement_texts(session, sent):
    """Statement name (as the server knows it) -> text, from everything the proxy knows."""
    texts = {}
    if session.identity.pooled:
        for stmt in session.statements.by_name.values():
            name, pos = codec.read_cstr(stmt.parse[5:], 0)
            texts[stmt.server_name] = codec.read_cstr(stmt.parse[5:], pos)[0]
    elif session.journal.snapshot is not None:
        texts.update((row[0], row[1]) for row in session.journal.snapshot.statements)
    for mtype, s, e in walk(sent):
        if mtype == P:
            name, pos = codec.read_cstr(sent[s + 5:e], 0)
            texts[name] = codec.read_cstr(sent[s + 5:e], pos)[0]
    return texts


def switch(session, lease, pool, server):
    """The lease goes on with server; the lost connection is closed."""
    lease.switch(pool, server)
    if not session.identity.pooled:
        session.slot.set_home(pool)
    session.journal.fatal = None


def give_error(session, lease, stream, sqlstate, message):
    """The transaction cannot go on: the client gets an error for its request in flight (and a
    ReadyForQuery for every Query/Sync it is owed), on a new server whose transaction state is
    what the client is told; True if that could be done."""
    plan = session.plan
    if not stream.scanner.at_boundary() or stream.held:
        return False  # the client got half a message: only closing the connection is clean now
    journal = session.journal
    in_block = not journal.wrapped and (plan.status != m.TX_IDLE or lease.server.tx_status != m.TX_IDLE)
    sent = journal.sent()
    try:
        pool, server = session.slot.acquire_primary()
        try:
            session_migrate.restore(session, server, None if session.identity.pooled else journal.snapshot)
            if not session.identity.pooled:  # statements the client parsed in this journal exist for it
                for mtype, s, e in walk(sent):
                    if mtype == P and statement_name(sent, s, e):
                        server.sock.sendall(sent[s:e] + codec.SYNC)
                        server._results()
            status = m.TX_IDLE
            if in_block and sqlstate == SERIALIZATION_FAILURE:  # the client is told its transaction failed
                server.execute("BEGIN")
                try:
                    server.execute("DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = "
                                   + session_state.literal(message) + "; END$$")
                except BackendError:
                    pass
                status = b"E"
        except BaseException:
            pool.release(server, reusable=False)
            raise
    except (ProxyError, OSError) as e:
        log.warning("%r: no server to go on with after a failed replay: %s", session, e)
        return False
    if session.slot.lease is not lease:  # the client left meanwhile (its session ended)
        pool.release(server, reusable=False)
        return True
    if sqlstate == SERIALIZATION_FAILURE:
        STATS.aborted += 1
    error = codec.error_response(sqlstate, message)
    if plan.outstanding or plan.in_extended:
        out = error + codec.ready_for_query(status) * plan.outstanding
    else:  # owed nothing (idle in its transaction): its next request gets the error
        out = journal.fail_next(error)
    plan.entries.clear()
    plan.hidden = 0
    plan.outstanding, plan.in_extended, plan.skipping, plan.status = 0, False, False, status
    if plan.completions is not None:
        plan.completions.clear()
    switch(session, lease, pool, server)
    server.tx_status = status
    journal.checkpoint()
    log.warning("%r: %s (%s)", session, message, sqlstate)
    relay.resume(session, lease, stream, b"", out)
    return True
