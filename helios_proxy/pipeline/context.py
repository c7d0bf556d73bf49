"""QueryContext: what the pipeline knows about one query on its way to a backend."""
from .sqltext import UNKNOWN, first_word


class QueryContext:
    """One per Query or Parse message that passes the pipeline. Plain slots: built per query."""

    __slots__ = ("session", "sql", "protocol", "statement", "started", "size", "large", "_tags", "_word",
                 "_lower")

    def __init__(self, session, sql, protocol="simple", statement="", size=None, large=False):
        self.session = session      # the ClientSession (user, database, client address, ...)
        self.sql = sql              # the query text (simple Query or Parse)
        self.protocol = protocol    # "simple" or "extended"
        self.statement = statement  # prepared statement name (extended)
        self.size = len(sql) if size is None else size  # bytes of the text as the client sent it
        # beyond pipeline.max_parse_bytes: stages neither parse nor regex-search it (sqltext.Large)
        self.large = large
        self.started = 0.0          # monotonic time the pipeline saw it (plugins stage)
        self._tags = self._lower = None
        self._word = (None, UNKNOWN)

    def __repr__(self):
        return f"QueryContext({self.protocol}, {self.sql[:60]!r})"

    @property
    def tags(self):
        """Annotations stages and plugins leave for later stages and logs (made on first use)."""
        if self._tags is None:
            self._tags = {}
        return self._tags

    # Views of the text several stages screen with, computed once (sqltext.py); a stage that
    # rewrites ctx.sql goes through the `sql` attribute, so these follow the rewritten text.
    @property
    def word(self):
        """sqltext.first_word(sql): the lower-case first word of a lone statement with no leading
        comment, None for any other text (then screens fall back to their regular expressions)."""
        if self._word[0] is not self.sql:
            self._word = (self.sql, first_word(self.sql))
        return self._word[1]

    @property
    def lower(self):
        if self._lower is None or self._lower[0] is not self.sql:
            self._lower = (self.sql, self.sql.lower())
        return self._lower[1]
