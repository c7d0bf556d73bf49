"""Is a query certainly read-only? Decided with PostgreSQL's own parser (pglast); anything doubtful
is a write and goes to the primary.

Reads: SELECT/VALUES/TABLE, SHOW, EXPLAIN (without ANALYZE of a write) whose every function is
known read-only: non-volatile in the catalog (pg_proc, loaded per database), or in the configured
read-only list; never one in the volatile list. Anything that writes (also in a CTE), locks (FOR
UPDATE/SHARE), creates (SELECT INTO), calls an unknown or volatile function, or does not parse, is
a write. BEGIN/START TRANSACTION READ ONLY opens a read-only transaction.
"""

from cachetools import LRUCache
from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor

from ..sqlshape import skeleton

READ, WRITE, BEGIN_READ_ONLY = "read", "write", "begin read only"
CATALOG_QUERY = ("SELECT proname FROM pg_catalog.pg_proc GROUP BY proname "
                 "HAVING bool_and(provolatile <> 'v')")
# Volatile in the catalog, yet without side effects: safe on a standby.
READ_ONLY_FUNCTIONS = frozenset({
    "random", "clock_timestamp", "timeofday", "pg_is_in_recovery", "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn", "pg_last_xact_replay_timestamp", "gen_random_uuid"})
MODIFYING = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
def cache_key(sql):
    """Literals do not change a classification: texts that differ only in them share an entry."""
    return skeleton(sql) or sql


class _Scan(Visitor):
    """Collects function names and notes anything that modifies or locks."""

    def __init__(self):
        super().__init__()
        self.functions, self.writes = set(), False

    def visit_FuncCall(self, parent, node):
        self.functions.add(node.funcname[-1].sval.lower())

    def visit_SelectStmt(self, parent, node):
        if node.lockingClause or node.intoClause:
            self.writes = True

    def visit(self, parent, node):
        if isinstance(node, MODIFYING):
            self.writes = True


def _reads(stmt):
    """Whether a top-level statement is of a kind that can be a read."""
    if isinstance(stmt, (ast.SelectStmt, ast.VariableShowStmt)):
        return True
    if isinstance(stmt, ast.ExplainStmt):
        analyze = any(o.defname == "analyze" for o in stmt.options or ())
        return not analyze or _reads(stmt.query)
    return False


class Classifier:
    def __init__(self, read_only=(), volatile=()):
        self.read_only = READ_ONLY_FUNCTIONS | {f.lower() for f in read_only}
        self.volatile = {f.lower() for f in volatile}
        self.catalog = {}       # database -> frozenset of non-volatile function names
        self.cache = LRUCache(maxsize=10000)

    def load_catalog(self, database, names):
        """The database's non-volatile functions (re)loaded: what was classified without them (a
        function unknown then counts as a write) is classified again."""
        self.catalog[database] = frozenset(names)
        for key in [k for k in self.cache if k[0] == database]:
            self.cache.pop(key, None)

    def classify(self, sql, database, skeleton=None):
        """READ, WRITE or BEGIN_READ_ONLY; skeleton: sqlshape.skeleton(sql) when known already."""
        key = (database, skeleton or cache_key(sql))
        kind = self.cache.get(key)
        if kind is None:
            kind = self.cache[key] = self._classify(sql, database)
        return kind

    def _classify(self, sql, database):
        try:
            stmts = parse_sql(sql)
        except ParseError:
            return WRITE
        if len(stmts) == 1 and isinstance(stmts[0].stmt, ast.TransactionStmt):
            s = stmts[0].stmt
            if s.kind.name in ("TRANS_STMT_BEGIN", "TRANS_STMT_START") and any(
                    o.defname == "transaction_read_only" and getattr(o.arg, "val", None) is not None
                    and o.arg.val.ival == 1 for o in s.options or ()):
                return BEGIN_READ_ONLY
            return WRITE
        if not stmts or not all(_reads(raw.stmt) for raw in stmts):
            return WRITE
        scan = _Scan()
        for raw in stmts:
            scan(raw)
        if scan.writes:
            return WRITE
        safe = self.catalog.get(database, frozenset())
        for name in scan.functions:
            if name in self.volatile or not (name in self.read_only or name in safe):
                return WRITE
        return READ
