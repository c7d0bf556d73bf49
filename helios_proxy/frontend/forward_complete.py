"""The forwarder's completion steps: queries the proxy answers itself, and Binds of named
statements, reported to analytics and plugins' on_query_complete like the answers the server
completes (those: frontend/relay.py `completed`)."""
import time

from .. import pipeline
from ..pipeline.stage import Action
from ..plugins.actions import Outcome


class CompletionSteps:
    """Asked by the Forwarder (frontend/forward.py) while completions are watched."""
    __slots__ = ("fwd",)

    def __init__(self, forwarder):
        self.fwd = forwarder

    def answered_here(self, ctx, result):
        """A query the pipeline answered or refused itself: complete at once."""
        proxy = self.fwd.session.proxy
        tag = None if result.action is Action.REJECT else "proxy answer"
        if proxy.analytics is not None:
            proxy.analytics.record(self.fwd.session, ctx, tag and tag.encode(), result.sqlstate, "proxy",
                                   self.fwd.session.plan.status)
        if proxy.plugins.complete_impls:
            proxy.plugins.query_complete(ctx, Outcome(time.monotonic() - ctx.started, error=result.sqlstate,
                                                      command_tag=tag))

    def executes_named(self, begin, end):
        """A Bind of a named statement is one execution of it: its completion is reported at the
        batch's ReadyForQuery (one per batch: the first Bind of an unreported batch)."""
        session = self.fwd.session
        if session.plan.pending_ctx is not None or session.plan.completions is None:
            return
        data = self.fwd.data
        try:
            portal_end = data.index(0, begin + 5, end)
            name = bytes(data[portal_end + 1:data.index(0, portal_end + 1, end)]).decode("utf-8", "replace")
        except ValueError:
            return  # (malformed: the server says so)
        prepared = session.statements.queries.get(name)
        if prepared is not None:
            ctx = pipeline.QueryContext(session, prepared.sql, "extended", name, prepared.size, prepared.large)
            ctx.started, ctx.analyze = time.monotonic(), prepared.analyze
            session.plan.report(ctx)
