"""QueryContext: what the pipeline knows about one query on its way to a backend."""
from ..sqlshape import skeleton
from .sqltext import UNKNOWN, first_word


class QueryContext:
    """One per Query or Parse message that passes the pipeline. Plain slots: built per query."""

    __slots__ = ("session", "sql", "protocol", "statement", "started", "size", "large", "_tags", "_word",
                 "_lower", "_skeleton", "decided", "analyze")

    def __init__(self, session, sql, protocol="simple", statement="", size=None, large=False):
        self.session = session      # the ClientSession (user, database, client address, ...)
        self.sql = sql              # the query text (simple Query or Parse)
        self.protocol = protocol    # "simple" or "extended"
        self.statement = statement  # prepared statement name (extended)
        self.size = len(sql) if size is None else size  # bytes of the text as the client sent it
        # beyond pipeline.max_parse_bytes: stages neither parse nor regex-search it (sqltext.Large)
        self.large = large
        self.started = 0.0          # monotonic time the pipeline saw it (plugins stage)
        self._tags = self._lower = self._skeleton = None
        self._word = (None, UNKNOWN)
        self.decided = None  # Decisions, once a stage made one
        self.analyze = False  # analytics records its answer (analytics stage)

    def decide(self):
        """The stages' decisions about the session, as data (made on first use); the forwarder
        applies them in one place (frontend/decisions.py apply) after the pipeline ran."""
        if self.decided is None:
            self.decided = Decisions()
        return self.decided

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
    def skeleton(self):
        """sqlshape.skeleton(sql): the text with its literals as `?` (None where that pattern could
        misread it), computed once for the stages that key memos by it (analytics, routing)."""
        if self._skeleton is None or self._skeleton[0] is not self.sql:
            self._skeleton = (self.sql, None if self.large else skeleton(self.sql))
        return self._skeleton[1]

    @property
    def lower(self):
        if self._lower is None or self._lower[0] is not self.sql:
            self._lower = (self.sql, self.sql.lower())
        return self._lower[1]


UNDECIDED = object()


class Decisions:
    """What the stages decided about the session for one query. None/False: nothing decided."""
    __slots__ = ("target", "lag", "tables", "route_override", "read_after", "pin", "settings_changed", "discard",
                 "schema_changed", "sql_prepare", "sql_needs", "commits", "state_changed", "autocommit_write",
                 "cache", "batch", "statement_target")

    def __init__(self):
        self.target = None            # (primary|standby, node name or None): where its next lease goes
        self.lag = None               # that read's own lag requirement (schema routing, routing/tables.py)
        self.tables = None            # the tables that read touches (counted per node once it has one)
        self.route_override = UNDECIDED  # SET helios.route: primary|standby|None (auto), later transactions
        self.read_after = None        # SET helios.read_after: a WAL position later reads must see
        self.pin = None               # why the session must keep its server connection
        self.settings_changed = False  # it may change session settings: read them back at lease end
        self.discard = False          # DISCARD ALL / DEALLOCATE ALL: its prepared statements go
        self.schema_changed = False   # DDL: shared statements are re-parsed after it commits
        self.sql_prepare = None       # (name, Statement): this Query is a PREPARE to run on the server
        self.sql_needs = ()           # Statements this Query EXECUTEs: prepare them on the server first
        self.commits = None           # replay: it commits, "lone" (a COMMIT alone) or "mixed" (among others)
        self.state_changed = False    # replay, session pooling: it may change state a migrate re-creates
        self.autocommit_write = False  # replay: a lone write, wrapped in a transaction if run in autocommit
        self.cache = None             # a miss's cache Fill (simple protocol), or a Parse's Admission (cache/)
        self.batch = None             # a single-row INSERT the forwarder may coalesce (batch/): its shape's key
        self.statement_target = None  # (name, target): a named statement's own route (SET helios.route
                                      # routed its Parse; its later Binds follow this once the SET is undone)

    def only_a_write(self):
        """Whether all that was decided is that the query is a lone write (replay wraps it in a
        transaction of its own when it runs outside one)."""
        return self.autocommit_write and self.only("autocommit_write")

    def only_a_commit(self):
        """Whether all that was decided is that the query is a COMMIT alone (replay asks its
        transaction's xid before it goes)."""
        return self.commits == "lone" and self.only("commits")

    def only(self, *names):
        """Whether nothing was decided but (some of) these."""
        return all(getattr(self, name) == value for name, value in NOTHING if name not in names)


NOTHING = tuple((name, getattr(Decisions(), name)) for name in Decisions.__slots__)
