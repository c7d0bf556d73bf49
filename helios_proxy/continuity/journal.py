"""The transaction journal (the spec's transaction_journal): per client session, what is needed to
re-run its work in progress on another server (continuity/replay.py) and to tell whether the re-run
gave the client the same answers.

A journal covers everything since its server was last idle with nothing owed (a clean
ReadyForQuery 'I', a checkpoint): the exact bytes the proxy sent the server since (`record`,
bounded by replay.max_journal_bytes) and a checksum of every byte the server answered since
(`received`: what the client has been given, or will be, byte for byte). Replaying means sending
the same bytes to a new server and checking that the first `seen` bytes of its answer have the
same checksum; the bytes after them continue the client's stream where it stopped.

Besides, for the commit in doubt: the transaction's xid, learned just before a COMMIT is sent
(replay.ask_xid), and in session pooling a snapshot of the session's state (settings, prepared
statements) as of the journal's start, for session migrate.

Only sessions of a proxy with [replay] enabled have a journal; without one nothing here runs.
"""
import hashlib
import logging

log = logging.getLogger(__name__)
UNKNOWN = object()  # xid: a COMMIT went out without the proxy learning the transaction's xid first


class Stats:
    """Counters for /replay and Prometheus (per worker process)."""

    def __init__(self):
        self.replayed = 0             # transactions (or idle sessions) re-run on a new server and continued
        self.aborted = 0              # re-runs that answered differently: 40001 to the client
        self.in_doubt_committed = 0   # a COMMIT in doubt had committed: answered as committed
        self.in_doubt_replayed = 0    # a COMMIT in doubt had not: the transaction was re-run
        self.unresolved = 0           # a write in doubt whose outcome could not be known: 08007
        self.not_replayable = 0       # losses where replay could not help (over the limit, state)
        self.over_limit = 0           # transactions whose journal outgrew max_journal_bytes
        self.failed = 0               # replays given up after replay_attempts

    def as_dict(self, journal_bytes=0):
        return dict(vars(self), journal_bytes=journal_bytes)


STATS = Stats()
JOURNALS = set()  # every live session's journal (journal bytes for /replay)


def new_digest():
    return hashlib.blake2b(digest_size=16)


class Journal:
    __slots__ = ("limit", "chunks", "size", "over", "digest", "seen", "at", "readies", "ready_seen",
                 "fatal", "xid", "commit_from", "snapshot", "changed", "needs_snapshot", "named", "wrapped",
                 "asked", "eof", "pending_error", "marked",
                 "__weakref__")

    def __init__(self, limit, snapshot=None):
        self.limit = limit
        self.snapshot = snapshot      # session pooling: the state to re-create first
        self.changed = False          # session state changed within this journal (session pooling)
        self.needs_snapshot = False   # changed, and the journal began anew since: not replayable until taken
        self.named = {}               # its prepared statements that are a COMMIT ("lone") or a lone write
                                      # ("write"), by the client's names
        self.at = 0                   # received(): the position in the current chunk hashed up to (None: stop)
        self.pending_error = None     # an ErrorResponse the client's next request gets (its replay failed)
        self.marked = True            # a field below `over` in checkpoint() may differ from its start (all set now)
        self.checkpoint()
        JOURNALS.add(self)

    def note_change(self):
        """The session's state changed (session pooling): a session migrate must take it along."""
        self.changed = True

    def fail_next(self, error):
        """A replay failed while the client was owed nothing: its next request gets error. Returns
        what the client gets now (nothing)."""
        self.pending_error = error
        return b""

    def take_error(self):
        error, self.pending_error = self.pending_error, None
        return error

    def close(self):
        JOURNALS.discard(self)

    def checkpoint(self, at=None):
        """The server is idle with nothing owed: nothing before this needs replaying (at: where in
        the chunk it is, a whole answer's end: relay.ServerStream.whole)."""
        if at is not None:
            self.at = at
        self.chunks, self.size, self.over = [], 0, False
        if self.marked:  # (most transactions leave the fields below as they were: record(), a whole answer)
            self.marked = False       # set by whatever writes them (this class's methods only)
            self.digest, self.seen = None, 0  # (made at the first byte hashed: most answers end clean in one chunk)
            self.readies, self.ready_seen = 0, 0  # ReadyForQuery messages since, and `seen` at the last one
            self.fatal = None         # a FATAL the server sent before closing (held back from the client)
            # the COMMIT in flight: its transaction's (xid, WAL position), and its offset in chunks
            self.xid = self.commit_from = None
            self.wrapped = False      # a lone write the proxy wrapped in a transaction (replay.wrap_begin)
            self.asked = False        # the xid query went out before the COMMIT (replay.ask_xid, wrap_end)
            self.eof = False          # the lost server closed the connection cleanly (relay.lost)
        if self.changed:
            self.changed, self.needs_snapshot = False, True

    # --- client -> server ----------------------------------------------------------------------
    def record(self, data):
        """Bytes about to go to the server (a bytes object: kept as it is)."""
        if self.over:
            return
        size = self.size + len(data)
        if size > self.limit:
            self.over, self.chunks = True, []
            STATS.over_limit += 1
            log.info("a transaction outgrew replay.max_journal_bytes (%d): it will not be replayed", self.limit)
            return
        self.chunks.append(data)
        self.size = size

    def commit_next(self, xid):
        """The next bytes recorded are a COMMIT; xid: its transaction's (None: it has none; UNKNOWN:
        not known, or not yet: replay.ask_xid's answer sets it)."""
        self.xid, self.commit_from, self.marked = xid, self.size, True

    def note_asked(self):
        """The xid query went out before the COMMIT (replay.ask_xid, wrap_end)."""
        self.asked = self.marked = True

    def note_wrapped(self):
        """A lone write goes out in a transaction the proxy opened for it; its xid is asked at its end."""
        self.wrapped = self.marked = True
        self.xid = UNKNOWN

    def note_lost(self, eof):
        """The server was lost (eof: it closed the connection cleanly)."""
        self.eof, self.marked = eof, True

    def xid_row(self, row):
        """The DataRow (or None: an error) answering replay.XID_QUERY, asked before a COMMIT: the
        transaction's xid and the server's WAL insert position then (all its records are before it)."""
        self.marked = True
        if row is None:  # a failed transaction: its COMMIT is a rollback, nothing can commit
            self.xid = None
            return
        size = int.from_bytes(row[2:6], "big", signed=True)
        if size < 0:
            self.xid = None
            return
        xid = int(row[6:6 + size])
        at = 6 + size
        size = int.from_bytes(row[at:at + 4], "big", signed=True)
        self.xid = (xid, row[at + 4:at + 4 + size].decode())

    def sent(self):
        return b"".join(self.chunks)

    # --- server -> client (from the pump, relay.ServerStream.feed) -------------------------------
    def chunk(self):
        self.at = 0

    def ready(self, data, end, clean):
        """A ReadyForQuery ending at data[end]; clean: the server is idle and owes nothing."""
        if self.at is None:
            return
        if clean:
            self.checkpoint()
        else:
            self._hash(data, end)
            self.readies += 1
            self.ready_seen = self.seen
            self.marked = True
        self.at = end

    def answered(self, data, clean):
        """data is a whole answer up to its ReadyForQuery (relay.ServerStream.whole); clean: the
        server is idle with nothing owed (a checkpoint)."""
        if clean:
            self.checkpoint(len(data))
            return
        self.chunk()
        self.ready(data, len(data), False)

    def fatal_error(self, data, start, message):
        """A FATAL (or a 57P0x warning: "terminating connection...") from the server at data[start]:
        not the client's (yet); the stream ends here."""
        if self.at is not None:
            self._hash(data, start)
            self.at = None
        self.fatal = message if self.fatal is None else self.fatal + message
        self.marked = True

    def skip(self, data, start, end):
        """data[start:end] is the answer to the proxy's own Query: not in the checksum."""
        if self.at is not None:
            self._hash(data, start)
            self.at = end

    def chunk_end(self, data, stop):
        if self.at is not None:
            self._hash(data, stop)

    def _hash(self, data, end):
        at = self.at
        if end > at:
            digest = self.digest
            if digest is None:
                digest = self.digest = new_digest()
            digest.update(data if at == 0 and end == len(data) else memoryview(data)[at:end])
            self.seen += end - at
            self.at = end
            self.marked = True

    # --- asked at a loss -----------------------------------------------------------------------
    def checksum(self):
        """The digest of what the client got since the last checkpoint."""
        return (self.digest or new_digest()).digest()

    def why_not(self):
        """Why this journal cannot be replayed, or None."""
        if self.over:
            return "the transaction outgrew replay.max_journal_bytes"
        if self.needs_snapshot:
            return "its session state changed an instant before (not captured yet)"
        if self.snapshot is not None and self.snapshot.stateful:
            return "its session holds state that cannot move (temporary tables, LISTEN, WITH HOLD cursors, locks)"
        return None
