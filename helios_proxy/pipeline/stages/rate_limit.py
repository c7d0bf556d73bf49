"""The rate-limit stage (limits/): first in the pipeline, a query over a [[limits]] entry is refused
with 53400 (or waits, on_exceed = "wait"). Concurrency slots are held until the session is owed
nothing more (the ReadyForQuery of its last request, server/relay.py; or the proxy's own answer)."""
from functools import lru_cache

from pglast.parser import ParseError, fingerprint

from ...limits import CONFIGURATION_LIMIT_EXCEEDED, Exceeded
from ..stage import Stage, StageResult


@lru_cache(maxsize=10000)
def _fingerprint(sql):
    try:
        return fingerprint(sql)
    except ParseError:
        return "unparsable"


class RateLimit(Stage):
    name = "rate_limit"

    @classmethod
    def enabled(cls, config):
        return bool(config.limits)

    def process(self, ctx):
        session = ctx.session
        try:
            held = session.proxy.limiter.take(session, lambda: "large" if ctx.large else _fingerprint(ctx.sql))
        except Exceeded as e:
            return StageResult.reject(CONFIGURATION_LIMIT_EXCEEDED, str(e))
        if held:  # (given back when the server, or the proxy, has answered all it owes: limits.release)
            session.limits_held.extend(held)
        return StageResult.CONTINUE
