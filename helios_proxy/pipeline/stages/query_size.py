"""Reject SQL text longer than [pipeline] max_query_bytes (SQLSTATE 54000) before it reaches a backend."""
from ...errors import PROGRAM_LIMIT_EXCEEDED
from ..stage import Stage, StageResult


class QuerySizeLimit(Stage):
    name = "query_size"

    @classmethod
    def enabled(cls, config):
        return config.pipeline.max_query_bytes > 0

    def process(self, ctx):
        limit = self.config.pipeline.max_query_bytes
        size = len(ctx.sql.encode())
        if size > limit:
            return StageResult.reject(PROGRAM_LIMIT_EXCEEDED,
                                      f"query text of {size} bytes exceeds max_query_bytes ({limit})")
        return StageResult.CONTINUE
