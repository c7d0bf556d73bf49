"""The analytics stage (the spec's "Query Analytics": record the start time; the response path
records the end): finds the Stat of the query's fingerprint (analytics/) for the response path
to update at its ReadyForQuery (server/relay.py). A named statement's executions are its Binds
(server/forward.py executes_named), each counted with its Parse's Stat."""
import time

from ..stage import Stage, StageResult


class Analytics(Stage):
    name = "analytics"

    @classmethod
    def enabled(cls, config):
        return config.analytics.enabled

    def process(self, ctx):
        if not ctx.started:
            ctx.started = time.monotonic()
        ctx.stat = ctx.session.proxy.analytics.stat(ctx.sql, ctx.large, ctx=ctx)
        return StageResult.CONTINUE
