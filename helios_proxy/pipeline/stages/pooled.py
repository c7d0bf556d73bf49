"""Base of the stages that keep transaction and statement pooling transparent: they look only at the
queries a cheap text screen lets through, and analyze each query text once (LRU cache)."""
from cachetools import LRUCache

from ..stage import Stage, StageResult


class PooledSqlStage(Stage):
    """Subclasses define `screen(ctx)` (cheap, may say yes too often), `analyze(sql)`,
    `act(ctx, analysis)` and `act_large(ctx)` for a text beyond pipeline.max_parse_bytes (it must
    err on the safe side: pin the client rather than miss session state)."""
    callback_safe = True  # (a text screen and a parse: nothing waits)
    text_only = True

    def __init__(self, config):
        super().__init__(config)
        self.analyses = LRUCache(maxsize=4096)

    @classmethod
    def enabled(cls, config):
        return config.pooled_modes

    def process(self, ctx):
        if not ctx.session.identity.pooled:
            return StageResult.CONTINUE
        if ctx.large:  # neither parsed nor regex-searched: the stage decides from cheap looks
            return self.act_large(ctx)
        if not self.screen(ctx):
            return StageResult.CONTINUE
        analysis = self.analyses.get(ctx.sql)
        if analysis is None:
            analysis = self.analyses[ctx.sql] = self.analyze(ctx.sql)
        return self.act(ctx, analysis)
