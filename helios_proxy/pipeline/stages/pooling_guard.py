"""Keeps transaction and statement pooling correct: notes SETs (and set_config(), DO, CALL) whose
settings must be captured and carried to the next server connection,
pins a client whose SQL creates session state (LISTEN, temp tables, WITH HOLD cursors, session
advisory locks, LOAD) to its server connection, and refuses transaction blocks in statement mode.
(Prepared statements have their own stage, sql_prepare.py, and pool/prepared.py.)

A cheap screen (sqltext.py) looks at each query first; only a query that may contain such a statement is
parsed (pglast, PostgreSQL's own parser), and parse results are cached by query text.
"""
import re

from pglast import ast, parse_sql
from pglast.parser import ParseError

from ...errors import FEATURE_NOT_SUPPORTED
from ..sqltext import Leading, head_word, large_mentions, mentions
from ..stage import StageResult
from .pooled import PooledSqlStage

LEADING = Leading("set", "reset", "discard", "listen", "unlisten", "load", "begin", "start", "declare", "do",
                  "call", "alter", "drop", "create")
ANYWHERE_WORDS = ("temp", "advisory_lock", "set_config")
ANYWHERE = re.compile(r"\btemp(orary)?\b|advisory_lock|set_config", re.I)
ADVISORY = re.compile(r"\bpg_(try_)?advisory_lock(_shared)?\s*\(", re.I)
SET_CONFIG = re.compile(r"set_config", re.I)
SETTING_WORDS = frozenset(("set", "reset", "discard", "do", "call"))
LARGE_KEYWORDS = ("set_config", "temp", "advisory_lock", "listen", ";")
CURSOR_OPT_HOLD = 0x0020
DDL_PREFIXES = ("Alter", "Drop", "Create", "Rename")
DDL_NODES = (ast.ViewStmt, ast.CompositeTypeStmt, ast.DefineStmt)


class Effects:
    """What a query does to session state."""
    __slots__ = ("settings", "pin", "begins", "discard", "ddl")

    def __init__(self, settings=False, pin=None, begins=False):
        self.settings, self.pin, self.begins = settings, pin, begins
        self.discard = False      # DISCARD ALL: every prepared statement goes too
        self.ddl = False          # a schema change: shared prepared statements may go stale


NOTHING = Effects()


def analyze(sql):
    """The session-state effects of sql (all its statements)."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return NOTHING  # PostgreSQL will report the syntax error itself
    fx = Effects()
    for raw in stmts:
        s = raw.stmt
        if type(s).__name__.startswith(DDL_PREFIXES) or isinstance(s, DDL_NODES):
            fx.ddl = True
        if isinstance(s, ast.VariableSetStmt):
            fx.settings = fx.settings or not s.is_local
        elif isinstance(s, (ast.DoStmt, ast.CallStmt)):  # code that may SET or call set_config()
            fx.settings = True
        elif isinstance(s, ast.DiscardStmt):
            fx.settings = True
            fx.discard = s.target.name == "DISCARD_ALL"
        elif isinstance(s, ast.ListenStmt):
            fx.pin = "LISTEN"
        elif isinstance(s, (ast.CreateStmt, ast.CreateTableAsStmt, ast.ViewStmt)) and _temp(s):
            fx.pin = "a temporary table"
        elif isinstance(s, ast.SelectStmt) and s.intoClause and s.intoClause.rel.relpersistence == "t":
            fx.pin = "a temporary table"
        elif isinstance(s, ast.DeclareCursorStmt) and s.options & CURSOR_OPT_HOLD:
            fx.pin = "a WITH HOLD cursor"
        elif isinstance(s, ast.LoadStmt):
            fx.pin = "LOAD"
        elif isinstance(s, ast.TransactionStmt) and s.kind.name in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
            fx.begins = True
    if SET_CONFIG.search(sql):  # set_config(name, value, false) anywhere: a session setting
        fx.settings = True
    if ADVISORY.search(sql):
        fx.pin = "a session-level advisory lock"
    return fx


def _temp(stmt):
    rel = stmt.relation if isinstance(stmt, ast.CreateStmt) else (
        stmt.into.rel if isinstance(stmt, ast.CreateTableAsStmt) else stmt.view)
    return rel is not None and rel.relpersistence == "t"


class PoolingGuard(PooledSqlStage):
    name = "pooling_guard"
    leaves_reads_alone = True
    analyze = staticmethod(analyze)

    @staticmethod
    def screen(ctx):
        sql = ctx.sql
        return LEADING.search(sql, ctx.word) or (mentions(sql, ANYWHERE_WORDS, ctx.lower) and ANYWHERE.search(sql))

    def act_large(self, ctx):
        """A text beyond pipeline.max_parse_bytes: its first word and a chunked keyword scan."""
        word = head_word(ctx.sql)
        found = large_mentions(ctx.sql, LARGE_KEYWORDS)
        fx = Effects(settings=word in SETTING_WORDS or "set_config" in found or ";" in found,
                     begins=word in ("begin", "start"))
        if word in ("listen", "load", "declare") or found & {"temp", "advisory_lock", "listen"}:
            fx.pin = "a statement too large to analyze (pipeline.max_parse_bytes) that may keep session state"
        return self.act(ctx, fx)

    def act(self, ctx, fx):
        if fx.begins and ctx.session.identity.mode == "statement":
            return StageResult.reject(FEATURE_NOT_SUPPORTED,
                                      "transaction blocks are not allowed in statement pooling mode")
        if fx.settings or fx.pin or fx.discard or fx.ddl:
            decided = ctx.decide()
            decided.settings_changed = decided.settings_changed or fx.settings
            decided.pin = decided.pin or fx.pin
            decided.discard = decided.discard or fx.discard
            decided.schema_changed = decided.schema_changed or fx.ddl
        return StageResult.CONTINUE
