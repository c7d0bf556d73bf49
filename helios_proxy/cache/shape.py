"""What the cache needs to know about a query text, from PostgreSQL's own parser (pglast), once per
text (an LRU by text, as classification is):

- `template`: a digest of the parse tree with every constant and parameter lifted out and every
  source position dropped. Two texts that differ only in spelling (letter case, spacing, comments,
  a literal written where another text has a parameter) have the same template; anything that can
  change the answer (a column alias, a cast, the order of ORDER BY keys) changes it. (pglast's
  fingerprint alone is not enough for a key: it ignores aliases, `SELECT 1 AS a` and `SELECT 1 AS
  b` share one.) `fingerprint` is kept for display and the workload class.
- `values`: the lifted constants in tree order, each with its kind, so `k = 12` (an int4
  literal) and `k = $1` bound to int4 '12' give the same key, while `'12'` and `12` do not. The
  constants of `x IN (...)` are a set: sorted, so `IN (3, 1, 2)` and `IN (1, 2, 3)` share a key.
- the relations it reads or writes, the functions it calls, and what makes it uncacheable.
"""
import hashlib
import json

from cachetools import LRUCache
from pglast.parser import ParseError, fingerprint, parse_sql_json

from ..sqlshape import LITERALS, skeleton as text_skeleton

UNKNOWN_TYPE = 0       # a string literal, or a parameter of unspecified type: resolved by context
INT4 = 23
POSITIONS = frozenset(("location", "stmt_location", "stmt_len", "rexpr_list_start", "rexpr_list_end"))
WRITES = {"InsertStmt": "relation", "UpdateStmt": "relation", "DeleteStmt": "relation", "MergeStmt": "relation"}
# Statements that change no table data (nothing to invalidate); any other statement that is not a
# plain read is DDL or code of unknown effect: the whole database is invalidated.
HARMLESS = frozenset(("TransactionStmt", "VariableSetStmt", "VariableShowStmt", "DiscardStmt", "ListenStmt",
                      "UnlistenStmt", "NotifyStmt", "PrepareStmt", "DeallocateStmt", "ExplainStmt",
                      "VacuumStmt", "CheckPointStmt", "LockStmt", "FetchStmt", "ClosePortalStmt",
                      "DeclareCursorStmt", "ConstraintsSetStmt", "LoadStmt"))
SETTERS = frozenset(("VariableSetStmt", "DiscardStmt", "DoStmt", "CallStmt"))
# SQL-standard functions without parentheses (CURRENT_DATE, LOCALTIME...): stable, like now().
STABLE_NODES = frozenset(("SQLValueFunction",))


class Shape:
    __slots__ = ("template", "fingerprint", "values", "reads", "writes", "everything", "functions", "why_not",
                 "stable", "features", "params", "creates_temp", "sets", "effects", "strict",
                 "forgets", "stats")

    def __init__(self):
        self.template = None    # bytes: digest of the constant-free tree
        self.fingerprint = ""
        self.values = ()        # ((kind, text) | ("$", n)) in tree order
        self.params = 0         # highest $n
        self.reads = ()         # ((schema or None, relation name)) read
        self.writes = ()        # relation names written (INSERT/UPDATE/DELETE/MERGE/TRUNCATE/COPY FROM)
        self.everything = False  # DDL, CALL, DO, EXECUTE...: may change any table of the database
        self.functions = ()     # lower-case names of the functions called
        self.why_not = None     # why a read is never cached (None: it may be, catalog permitting)
        self.stable = False     # calls CURRENT_TIMESTAMP-like SQL functions
        self.features = frozenset()  # for the workload class: "agg", "group", "window", "range", "vector", ...
        self.creates_temp = False  # mentions a temporary relation (CREATE TEMP TABLE...)
        self.sets = False       # may change session settings (SET, RESET, DISCARD, DO, CALL, set_config)
        self.effects = None     # (catalog, whether its functions may write): QueryCache.check_functions
        self.strict = False     # BEGIN/START TRANSACTION ISOLATION LEVEL REPEATABLE READ or SERIALIZABLE
        self.forgets = False    # DEALLOCATE or DISCARD: prepared statements go
        self.stats = None       # its cache record (ClassStats), once looked up


def _const(body):
    """(kind, text) of an A_Const's JSON body."""
    if "ival" in body:
        return (INT4, str(body["ival"].get("ival", 0)))
    if "sval" in body:
        return (UNKNOWN_TYPE, body["sval"].get("sval", ""))
    if "fval" in body:
        return ("numeric", body["fval"].get("fval", "0"))
    if "boolval" in body:
        return ("bool", "true" if body["boolval"].get("boolval") else "false")
    if "bsval" in body:
        return ("bits", body["bsval"].get("bsval", ""))
    return ("null", "")


VECTOR_OPERATORS = frozenset(("<->", "<=>", "<#>", "<+>"))
RANGE_OPERATORS = frozenset(("<", ">", "<=", ">=", "~~", "~~*", "!~~", "~", "~*"))
AGGREGATES = frozenset(("count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and", "bool_or",
                        "stddev", "variance", "percentile_cont", "percentile_disc", "json_agg", "jsonb_agg"))


class _Walk:
    def __init__(self):
        self.values, self.reads, self.writes, self.functions = [], [], [], []
        self.ctes, self.features = set(), set()
        self.params, self.locks, self.into, self.stable, self.temp = 0, False, False, False, False
        self.modifying = False

    def node(self, node):
        if isinstance(node, list):
            return [self.node(x) for x in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (kind, body), = node.items()
            if kind == "A_Const":
                self.values.append(_const(body))
                return {"$": 0}
            if kind == "ParamRef":
                n = body.get("number", 0)
                self.values.append(("$", n))
                self.params = max(self.params, n)
                return {"$": 0}
            if kind == "A_Expr" and body.get("kind") == "AEXPR_IN":
                items = body.get("rexpr", {}).get("List", {}).get("items", [])
                if items and all("A_Const" in item for item in items):  # x IN (constants): a set
                    self.note(kind, body)
                    self.values.extend(sorted((_const(item["A_Const"]) for item in items), key=repr))
                    return {kind: {k: (len(items) if k == "rexpr" else self.node(v))
                                   for k, v in body.items() if k not in POSITIONS}}
            self.note(kind, body)
        elif node.get("relpersistence") == "t":  # a RangeVar in a typed field (CREATE TEMP TABLE's relation)
            self.temp = True
        return {k: self.node(v) for k, v in node.items() if k not in POSITIONS}

    def note(self, kind, body):
        if kind == "RangeVar":
            if body.get("relpersistence") == "t":
                self.temp = True
            self.reads.append((body.get("schemaname"), body.get("relname", "")))
        elif kind == "FuncCall":
            name = body["funcname"][-1]["String"]["sval"].lower()
            self.functions.append(name)
            if body.get("over"):
                self.features.add("window")
            if name in AGGREGATES or body.get("agg_star"):
                self.features.add("agg")
        elif kind in STABLE_NODES:
            self.stable = True
        elif kind == "CommonTableExpr":
            self.ctes.add(body.get("ctename", ""))
        elif kind == "SelectStmt":
            if body.get("lockingClause"):
                self.locks = True
            if body.get("intoClause"):
                self.into = True
            if body.get("groupClause"):
                self.features.add("group")
            if body.get("whereClause"):
                self.features.add("where")
            if body.get("limitCount"):
                self.features.add("limit")
        elif kind in WRITES:
            self.modifying = True
            self.writes.append(body[WRITES[kind]]["relname"])
        elif kind == "A_Expr":
            op = body.get("name", [{}])[-1].get("String", {}).get("sval", "")
            if op in VECTOR_OPERATORS:
                self.features.add("vector")
            elif op in RANGE_OPERATORS or body.get("kind") in ("AEXPR_BETWEEN", "AEXPR_LIKE", "AEXPR_ILIKE"):
                self.features.add("range")


LOOSE = frozenset(("read committed", "read uncommitted"))


def _strict(body):
    """Whether a BEGIN/START TRANSACTION asks for a snapshot per transaction (a cached answer
    could be newer than its snapshot)."""
    for option in body.get("options", ()):
        d = option.get("DefElem", {})
        if d.get("defname") == "transaction_isolation":
            value = d.get("arg", {}).get("A_Const", {}).get("sval", {}).get("sval", "")
            if value.lower() not in LOOSE:
                return True
    return False


def analyze(sql):
    """The Shape of sql (a Query's or a Parse's text)."""
    shape = Shape()
    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError:
        shape.why_not = "does not parse"
        shape.everything = False
        return shape
    stmts = tree.get("stmts", [])
    walk = _Walk()
    canonical = walk.node(stmts)
    shape.values, shape.params = tuple(walk.values), walk.params
    shape.functions = tuple(dict.fromkeys(walk.functions))
    shape.reads = tuple(dict.fromkeys(r for r in walk.reads if r[0] is not None or r[1] not in walk.ctes))
    shape.stable, shape.features, shape.creates_temp = walk.stable, frozenset(walk.features), walk.temp
    kinds = [next(iter(s["stmt"])) for s in stmts]
    shape.sets = "set_config" in shape.functions or any(k in SETTERS for k in kinds)
    shape.forgets = any(k in ("DeallocateStmt", "DiscardStmt") for k in kinds)
    shape.strict = any(_strict(s["stmt"][k]) for s, k in zip(stmts, kinds) if k == "TransactionStmt")
    writes = list(walk.writes)
    for s, kind in zip(stmts, kinds):
        body = s["stmt"][kind]
        if kind == "TruncateStmt":
            writes += [r["RangeVar"]["relname"] for r in body.get("relations", [])]
        elif kind == "CopyStmt" and body.get("is_from") and body.get("relation"):
            writes.append(body["relation"]["relname"])
        elif kind not in HARMLESS and kind not in ("SelectStmt", "CopyStmt") and kind not in WRITES:
            shape.everything = True  # DDL, CALL, DO, EXECUTE, GRANT...: anything may change
    shape.writes = tuple(dict.fromkeys(writes))
    if len(stmts) != 1:
        shape.why_not = "not a single statement"
    elif kinds[0] != "SelectStmt":
        shape.why_not = "not a SELECT"
    elif walk.modifying:
        shape.why_not = "writes"
    elif walk.locks:
        shape.why_not = "FOR UPDATE/SHARE"
    elif walk.into:
        shape.why_not = "SELECT INTO"
        shape.everything = True  # a new table: the catalog changes
    elif walk.temp:
        shape.why_not = "temporary table"
    if shape.why_not is None:
        shape.template = hashlib.blake2b(json.dumps(canonical, separators=(",", ":")).encode(),
                                         digest_size=16).digest()
    return shape


# A text's literals, as the classifier's cache_key finds them: quoted strings and bare numbers.
MEMO_LIMIT = 8192  # longer texts are analyzed every time, never kept
UNMAPPED = object()


def _typed(literal):
    """The (kind, text) the parse tree gives a literal as LITERALS found it."""
    if literal[0] == "'":
        return (UNKNOWN_TYPE, literal[1:-1].replace("''", "'"))
    if "." in literal:
        return ("numeric", literal)
    value = int(literal)
    return (INT4, str(value)) if value < 1 << 31 else ("numeric", literal)


class Shapes:
    """Shapes by query text, bounded. Texts that differ only in their literals (clients that
    interpolate values: pgbench -M simple, ORMs without parameters) share the work: the first one
    is parsed, and if its literals in text order are exactly the tree's constants, the others take
    its shape with their own literals (found by a regular expression) instead of a parse."""

    def __init__(self, size=10000):
        self.cache = LRUCache(maxsize=size)
        self.skeletons = LRUCache(maxsize=size)  # text with literals replaced -> base Shape or UNMAPPED
        self.fingerprints = {}                   # template -> pglast fingerprint

    def get(self, sql):
        """(shape, its constants): the constants are the text's own, the shape may be shared."""
        shape = self.cache.get(sql)
        if shape is not None:
            return shape, shape.values
        if len(sql) > MEMO_LIMIT:
            shape = self._analyze(sql)
            return shape, shape.values
        skeleton, literals = None, None
        skeleton = text_skeleton(sql)
        if skeleton is not None:
            literals = LITERALS.findall(sql)
            base = self.skeletons.get(skeleton)
            if base is not None and base is not UNMAPPED:  # (not kept by text: unique texts would churn)
                return base, tuple(map(_typed, literals)) if base.why_not is None else base.values
        shape = self.cache[sql] = self._analyze(sql)
        if skeleton is not None and skeleton not in self.skeletons:
            mapped = shape.why_not is not None or tuple(map(_typed, literals)) == shape.values
            self.skeletons[skeleton] = shape if mapped else UNMAPPED
        return shape, shape.values

    def _analyze(self, sql):
        shape = analyze(sql)
        if shape.template is not None:
            fp = self.fingerprints.get(shape.template)
            if fp is None:
                if len(self.fingerprints) > 100000:
                    self.fingerprints.clear()
                fp = self.fingerprints[shape.template] = fingerprint(sql)
            shape.fingerprint = fp
        return shape
