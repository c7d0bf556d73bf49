"""The journal stage (replay on): what the transaction journal must know about a query before it
goes out (continuity/journal.py, continuity/replay.py).

- a COMMIT (or END): the forwarder learns the transaction's xid just before sending it, so that a
  COMMIT in flight when the primary dies can be looked up with txid_status() on the new one. A
  COMMIT among other statements in one Query is "mixed": its xid cannot be learned in advance.
- a lone INSERT, UPDATE, DELETE or MERGE outside a transaction block (a Query, or an extended
  batch up to its Sync): the forwarder wraps it in a transaction of its own (BEGIN, then the xid and COMMIT
  in the same flight, all cut out of the client's stream), so that its outcome can be looked up
  too if the primary dies while it runs or commits.
- session pooling: a query that may change session state (SET, PREPARE, LISTEN, CREATE TEMP...,
  anything but plain DML, reads and transaction control) makes the session's state be read back
  after its transaction, for a session migrate.
"""
import re

from ..stage import Stage, StageResult

COMMITS = frozenset(("commit", "end"))
# First words of statements that leave session state as it was (beyond the transaction).
STATELESS = frozenset(("select", "insert", "update", "delete", "with", "values", "table", "begin", "start",
                       "commit", "end", "rollback", "abort", "savepoint", "release", "fetch", "move", "close",
                       "show", "explain", "copy", "lock", "truncate", "merge", "declare", "vacuum",
                       "analyze", "checkpoint", "notify"))
STATEFUL_CALLS = re.compile(r"set_config|advisory_lock|pg_advisory|dblink_connect", re.I)
MENTIONS_COMMIT = re.compile(r"\b(?:commit|end)\b", re.I)
# Lone writes that run the same inside a transaction block (a SELECT that may write is left alone:
# its now() would become the BEGIN's; in flight at a failover it gets 08007, replay.py).
WRAPPABLE = frozenset(("insert", "update", "delete", "merge"))


class Journal(Stage):
    name = "journal"
    callback_safe = True
    text_only = True  # (its first word, COMMIT mentioned: no number changes those)
    leaves_reads_alone = True

    @classmethod
    def enabled(cls, config):
        return config.replay.enabled

    def process(self, ctx):
        session = ctx.session
        if session.journal is None:
            return StageResult.CONTINUE
        word = ctx.word
        if word in COMMITS:
            ctx.decide().commits = "lone"
        elif word in WRAPPABLE:
            ctx.decide().autocommit_write = True  # (if it runs outside a transaction block)
        elif word is None and (ctx.large or MENTIONS_COMMIT.search(ctx.sql)):
            ctx.decide().commits = "mixed"
        if not session.identity.pooled and (word not in STATELESS or ctx.large or STATEFUL_CALLS.search(ctx.sql)):
            ctx.decide().state_changed = True
        return StageResult.CONTINUE
