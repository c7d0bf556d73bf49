"""Schema routing (the spec's "table-level routing rules, data temperature classification"): where a
read goes may depend on the tables it touches.

`[[routing.tables]]` rules (first match per table): `match` is `schema.table`, `schema.*` or a bare
table name (which matches the table in any schema, and unqualified references); then either
`node` (a node name, `primary` or `standby`) or `temperature` (`hot`, `warm`, `cold`), and
optionally `max_lag_ms`.

A table's temperature is its rule's, else learned from the writes that pass the proxy: written in
the last `routing.hot_window_s` -> hot; not written for `routing.cold_after_s` (or never since the
proxy started, once that long has passed) -> cold; else warm. A read of cold tables only may use a
standby lagging up to `routing.cold_max_lag_ms`; a read touching a hot table needs its rule's
`max_lag_ms` (or `routing.max_lag_ms`); otherwise the usual limits apply. A read touching
several tables takes the strictest: `primary` before a named node (two different nodes: the
primary), a hot limit before warm, cold only when every table is cold. Writes always go to the
primary; read-your-writes still applies on top.

Which tables a query reads and writes comes from pglast's parse tree, once per query shape.
"""
import collections
import logging
import time
from fnmatch import fnmatchcase

from cachetools import LRUCache
from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor

log = logging.getLogger(__name__)
WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
COLD_LAG = object()  # a lag requirement: routing.cold_max_lag_ms, no byte limit


class _Tables(Visitor):
    def __init__(self):
        super().__init__()
        self.read, self.written, self.ctes = set(), set(), set()

    def visit_CommonTableExpr(self, ancestors, node):
        self.ctes.add(node.ctename)

    def visit_RangeVar(self, ancestors, node):
        name = f"{node.schemaname}.{node.relname}" if node.schemaname else node.relname
        holder, member = ancestors.node, ancestors.member
        if isinstance(holder, tuple) and ancestors.parent is not None:  # (an item of a list)
            holder, member = ancestors.parent.node, ancestors.parent.member
        target = (isinstance(holder, WRITES) and member == "relation"
                  or isinstance(holder, ast.CopyStmt) and holder.is_from or isinstance(holder, ast.TruncateStmt))
        (self.written if target else self.read).add(name)


def tables_of(sql):
    """(tables read, tables written) of a query text; (None, None) when it does not parse."""
    try:
        tree = parse_sql(sql)
    except ParseError:
        return None, None
    found = _Tables()
    found(tree)
    written = frozenset(found.written - found.ctes)
    return frozenset(found.read - found.ctes - written), written


class TableRouter:
    def __init__(self, config):
        self.memo = LRUCache(maxsize=8192)  # query skeleton (or text) -> (read, written)
        self.last_write = {}                # table -> monotonic time of the last write seen
        self.reads = collections.defaultdict(collections.Counter)  # table -> node name -> reads
        self.started = time.monotonic()
        self.configure(config)

    def configure(self, config):
        self.config, self.rules = config, list(config.routing.tables)

    def tables(self, sql, key=None):
        key = key or sql
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = tables_of(sql)
        return found

    def rule_for(self, table):
        schema, _, name = table.rpartition(".")
        for rule in self.rules:
            pattern = rule.match
            if "." in pattern:
                if schema and fnmatchcase(table, pattern):
                    return rule
            elif fnmatchcase(name, pattern):
                return rule
        return None

    def temperature(self, table, now=None):
        """(temperature, source): the rule's, or learned from writes."""
        rule = self.rule_for(table)
        if rule is not None and rule.temperature:
            return rule.temperature, "declared"
        r, now = self.config.routing, now or time.monotonic()
        written = self.last_write.get(table)
        if written is not None and now - written <= r.hot_window_s:
            return "hot", "learned"
        if now - (written if written is not None else self.started) >= r.cold_after_s:
            return "cold", "learned"
        return "warm", "learned"

    def wrote(self, tables):
        now = time.monotonic()
        for table in tables:
            self.last_write[table] = now

    def decide(self, read):
        """For a read of these tables: (node name or "primary" or None, lag requirement or None).
        The lag requirement: None (the usual limits), COLD_LAG, or a max_lag_ms for hot tables."""
        nodes, hot_ms, all_cold, now = set(), None, True, time.monotonic()
        for table in read:
            rule = self.rule_for(table)
            if rule is not None and rule.node:
                if rule.node != "standby":
                    nodes.add(rule.node)
                all_cold = False
                continue
            temperature, _ = self.temperature(table, now)
            if temperature == "hot":
                limit = (rule.max_lag_ms if rule is not None and rule.max_lag_ms else
                         self.config.routing.max_lag_ms)
                hot_ms = limit if hot_ms is None else min(hot_ms, limit)
            if temperature != "cold":
                all_cold = False
        if "primary" in nodes or len(nodes) > 1:
            return "primary", None
        if nodes:
            return nodes.pop(), None
        if hot_ms is not None:
            return None, hot_ms
        if all_cold and read and self.config.routing.cold_max_lag_ms:
            return None, COLD_LAG
        return None, None

    def count(self, tables, node_name):
        for table in tables:
            self.reads[table][node_name] += 1

    def view(self):
        """Every table seen or named by a rule: temperature, where it came from, rule, reads per node."""
        now = time.monotonic()
        names = set(self.reads) | set(self.last_write) | {r.match for r in self.rules if "*" not in r.match}
        out = []
        for table in sorted(names):
            temperature, source = self.temperature(table, now)
            rule = self.rule_for(table)
            written = self.last_write.get(table)
            out.append({"table": table, "temperature": temperature, "source": source,
                        "rule": None if rule is None else {k: v for k, v in vars(rule).items() if v},
                        "reads": dict(self.reads.get(table, {})),
                        "last_write_s_ago": None if written is None else round(now - written, 3)})
        return out
