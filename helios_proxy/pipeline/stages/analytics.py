"""The analytics stage (the spec's "Query Analytics": record the start time; the response path
records the end): stamps the query's start and marks it for analytics (analytics/), which note
its answer at its ReadyForQuery (frontend/relay.py) and find its fingerprint when they add the noted
answers up. A named statement's executions are its Binds (frontend/forward.py executes_named), each
counted with its Parse's text."""
import time

from ..stage import Stage, StageResult


class Analytics(Stage):
    name = "analytics"
    callback_safe = True

    @classmethod
    def enabled(cls, config):
        return config.analytics.enabled

    def process(self, ctx):
        if not ctx.started:
            ctx.started = time.monotonic()
        ctx.analyze = True
        return StageResult.CONTINUE
