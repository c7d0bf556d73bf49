"""A query's intent, by PostgreSQL's own grouping of statements for `log_statement`: `ddl`
(CREATE, ALTER, DROP, GRANT, COMMENT...), `write` (INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY
FROM, and a SELECT that writes or locks), `read` (SELECT, VALUES, TABLE, SHOW, COPY TO, EXPLAIN
without ANALYZE of a write), `transaction` (BEGIN, COMMIT, SAVEPOINT...) and `utility` (SET,
VACUUM, LISTEN, PREPARE...). Decided once per fingerprint from pglast's parse; a text of several
statements takes the weightiest of them (ddl, write, read, utility, transaction).
"""
import re

from pglast import ast, parse_sql
from pglast.parser import ParseError

ORDER = ("ddl", "write", "read", "utility", "transaction")
DDL = re.compile(r"^(Create|Alter|Drop|Rename|Grant|Comment|Index|View|Rule|Define|CompositeType|SecLabel|"
                 r"ImportForeignSchema|RefreshMatView|Reindex|Cluster|ReassignOwned|CreateCast)")
WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt, ast.TruncateStmt, ast.CallStmt,
          ast.DoStmt)


def intent(sql):
    try:
        statements = parse_sql(sql)
    except ParseError:
        return "utility"  # (the server refuses it: nothing read or written)
    kinds = {_one(raw.stmt) for raw in statements} or {"utility"}
    return next(k for k in ORDER if k in kinds)


def _one(stmt):
    if isinstance(stmt, WRITES):
        return "write"
    if isinstance(stmt, ast.SelectStmt):
        return "write" if stmt.intoClause or stmt.lockingClause or _modifying_with(stmt) else "read"
    if isinstance(stmt, ast.CopyStmt):
        return "write" if stmt.is_from else "read"
    if isinstance(stmt, ast.ExplainStmt):
        analyze = any(o.defname == "analyze" for o in stmt.options or ())
        return _one(stmt.query) if analyze else "read"
    if isinstance(stmt, (ast.VariableShowStmt,)):
        return "read"
    if isinstance(stmt, ast.TransactionStmt):
        return "transaction"
    if DDL.match(type(stmt).__name__):
        return "ddl"
    return "utility"


def _modifying_with(stmt):
    with_clause = stmt.withClause
    return bool(with_clause) and any(isinstance(cte.ctequery, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt,
                                                                ast.MergeStmt)) for cte in with_clause.ctes)
