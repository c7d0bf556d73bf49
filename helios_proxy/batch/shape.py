"""Which INSERTs may be coalesced, and where a text's row is: a single-row `INSERT INTO t (cols)
VALUES (...)` with an optional RETURNING, of a table `[batch] tables` names, without WITH, ON
CONFLICT, OVERRIDING or DEFAULT VALUES. Decided from pglast's parse once per shape; the row of each
text is cut out with pglast's scanner (quotes and nested parentheses read right)."""
from fnmatch import fnmatchcase

from pglast import ast, parse_sql
from pglast.parser import ParseError, scan


class Insert:
    """A batchable shape: its table (as written), whether it returns rows, and the text around the
    row of the last text split (prefix, suffix without ';', the text after the row as it was, and
    the length of the prefix and that text: a text longer than it has a row between them)."""
    __slots__ = ("table", "returning", "around")

    def __init__(self, table, returning):
        self.table, self.returning, self.around = table, returning, None


def analyze(sql, tables):
    """An Insert for a batchable text, else None."""
    try:
        statements = parse_sql(sql)
    except ParseError:
        return None
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.InsertStmt):
        return None
    stmt = statements[0].stmt
    select = stmt.selectStmt
    if (stmt.withClause or stmt.onConflictClause or stmt.override or not stmt.cols or select is None
            or not select.valuesLists or len(select.valuesLists) != 1 or select.withClause):
        return None
    rel = stmt.relation
    table = f"{rel.schemaname}.{rel.relname}" if rel.schemaname else rel.relname
    if not any(pattern == "*" or fnmatchcase(table, pattern) or fnmatchcase(rel.relname, pattern)
               for pattern in tables):
        return None
    return Insert(table, bool(stmt.returningClause))


def split(sql):
    """(prefix up to the row, the row "(...)", what follows it without a final ';') or None."""
    try:
        tokens = scan(sql)
    except ParseError:
        return None
    depth, at = 0, None
    for i, token in enumerate(tokens):
        if token.name == "ASCII_40":
            depth += 1
        elif token.name == "ASCII_41":
            depth -= 1
        elif token.name == "VALUES" and depth == 0:
            at = i
            break
    if at is None or at + 1 >= len(tokens) or tokens[at + 1].name != "ASCII_40":
        return None
    depth = 0
    for close in range(at + 1, len(tokens)):
        name = tokens[close].name
        depth += (name == "ASCII_40") - (name == "ASCII_41")
        if depth == 0:
            break
    else:
        return None
    rest = tokens[close + 1:]
    if rest and rest[-1].name == "ASCII_59":
        rest = rest[:-1]
    if rest and rest[0].name != "RETURNING":
        return None
    start, end = tokens[at + 1].start, tokens[close].end + 1
    suffix = sql[end:rest[-1].end + 1] if rest else ""
    return sql[:start], sql[start:end], suffix
