"""The rate-limit stage (limits/): first after the tenant stage. Each statement of a simple Query is
one execution against the [[limits]] and the tenant's qps (limits/admission.py; an Execute of the
extended protocol is counted by the forwarder); one over a limit is refused with 53400 (or waits,
on_exceed = "wait"). A Parse runs nothing: it is only remembered for fingerprint-keyed limits.
Concurrency slots are held until the session is owed nothing more (the ReadyForQuery of its last
request, frontend/relay.py; or the proxy's own answer)."""
from ...limits.admission import Texts, statements_in
from ..stage import Stage, StageResult


class RateLimit(Stage):
    name = "rate_limit"

    def __init__(self, config):
        super().__init__(config)
        # Token buckets and sliding windows kept here answer at once (the workers' shared table is
        # locked without waiting); a concurrency guard or a wait may queue, the fleet's and a
        # tenant's qps may ask Redis: then only the session's greenlet may take.
        self.callback_safe = (not config.tenancy.enabled and not config.fleet.redis_url and all(
            limit.kind != "concurrency" and limit.on_exceed == "reject" for limit in config.limits))

    @classmethod
    def enabled(cls, config):
        return bool(config.limits) or config.tenancy.enabled

    def process(self, ctx):
        session = ctx.session
        admission = session.proxy.admission
        if ctx.protocol != "simple":  # its executions are counted at each Execute
            if admission.by_text:
                session.statements.texts_of(Texts).parsed(ctx.statement, None if ctx.large else ctx.sql)
            return StageResult.CONTINUE
        sql = ctx.sql
        count = 1 if ctx.large or ";" not in sql or ctx.word is not None else statements_in(sql)
        refused = admission.take(session, count, None if ctx.large else ctx.sql)
        if refused is not None:
            return StageResult.reject(*refused)
        return StageResult.CONTINUE
