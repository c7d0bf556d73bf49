"""The batch stage (the spec's "batch", last before the backend but for the journal's bookkeeping):
a single-row INSERT sent in autocommit by a pooled client waits here for companions and is
answered once its multi-row batch committed (batch/); one sent in the extended protocol is marked
for the forwarder, which takes its whole Parse..Sync (frontend/forward_batch.py). Everything else
passes untouched: inside a transaction, with answers still owed, a session whose settings are not
checked yet, and any session that ever used lastval() or currval() (a batched row is inserted on
another server connection, so its sequence values would not be that session's)."""
from ..stage import Stage, StageResult


class Batch(Stage):
    name = "batch"

    @classmethod
    def enabled(cls, config):
        return config.batch.enabled and bool(config.batch.tables) and config.pooled_modes

    def process(self, ctx):
        session = ctx.session
        sql = ctx.sql
        batches = session.proxy.batches
        if "val(" in sql and ("lastval" in ctx.lower or "currval" in ctx.lower):
            batches.never(session)
        if (session in batches.off or ctx.large or not session.identity.pooled or session.server is not None
                or session.identity.tenant is not None  # (a batch runs on one connection: one tenant's proof)
                or session.slot.pinned or session.plan.owes() or not session.settings.checked
                or ctx.word != "insert"):
            return StageResult.CONTINUE
        if ctx.protocol != "simple":  # the forwarder takes the whole batch (frontend/forward_batch.py)
            if not ctx.statement:
                ctx.decide().batch = True
            return StageResult.CONTINUE
        answer = batches.submit(session, ctx)
        return StageResult.CONTINUE if answer is None else StageResult.respond(answer)
