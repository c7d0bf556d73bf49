"""The batch stage (the spec's "batch", last before the backend but for the journal's bookkeeping):
a single-row INSERT sent in autocommit by a pooled client is marked for the forwarder's batch steps
(frontend/forward_batch.py), which coalesce it with other clients' and answer it once its
multi-row batch committed (batch/): a simple Query, or the whole Parse..Sync of one sent in the
extended protocol. The stage itself only decides by the text (it never waits: the fast path may run
it in a loop callback, and wait for the batch there: frontend/fastpath.py); whether the session
may wait for a batch now is asked when the row is placed (batch/ Batches.place): not inside a
transaction, with answers still owed, in a session whose settings are not checked yet, nor in
any session that ever used lastval() or currval() (a batched row is inserted on another server
connection, so its sequence values would not be that session's)."""
from ..stage import Stage, StageResult


class Batch(Stage):
    name = "batch"
    callback_safe = True
    text_only = True  # (its first word; whether the session may wait for a batch now: Batches.place)

    @classmethod
    def enabled(cls, config):
        return config.batch.enabled and bool(config.batch.tables) and config.pooled_modes

    def process(self, ctx):
        session = ctx.session
        sql = ctx.sql
        if "val(" in sql and ("lastval" in ctx.lower or "currval" in ctx.lower):
            session.proxy.batches.never(session)
        if ctx.large or ctx.word != "insert":
            return StageResult.CONTINUE
        if ctx.protocol == "simple":  # (texts of one shape share their batcher: by the skeleton)
            ctx.decide().batch = ctx.skeleton or ctx.sql
        elif not ctx.statement:  # (the extended protocol: the forwarder takes the whole batch)
            ctx.decide().batch = ctx.sql
        return StageResult.CONTINUE
