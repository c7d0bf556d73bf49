"""The rewrite stage (the spec's "Query Rewriter"): the [[rewrite]] rules and plugins' rules
(rewrite/) change the text of a Query or Parse before analytics, routing and the cache see it.
Texts beyond pipeline.max_parse_bytes are left alone."""
from ...rewrite import Rewriter
from ..stage import Stage, StageResult

CONTINUE = StageResult.CONTINUE


class Rewrite(Stage):
    name = "rewrite"
    callback_safe = True
    uses_plugins = True

    def __init__(self, config, plugins=None):
        super().__init__(config)
        self.rewriter = Rewriter(config, plugins)
        self.lower = self.rewriter.literals  # (then the pipeline's lower-case text is worth sharing)

    @classmethod
    def enabled(cls, config, plugins=None):
        return bool(config.rewrite) or bool(plugins is not None and plugins.pm.hook.rewrite_rules.get_hookimpls())

    def process(self, ctx):
        if ctx.large:
            return CONTINUE
        rewriter = self.rewriter
        if rewriter.screen is not None:
            lower = ctx.lower
            for literal in rewriter.screen:
                if literal in lower:
                    break
            else:
                return CONTINUE  # (no rule can apply)
        sql = rewriter.rewrite(ctx.sql, ctx.session, ctx.lower if self.lower else None)
        return CONTINUE if sql is ctx.sql else StageResult.rewrite(sql)
