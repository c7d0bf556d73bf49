"""HeliosProxy plugin: reject DELETE and UPDATE statements without a WHERE clause before they reach
PostgreSQL (a classic "oops, the whole table" guard).

Settings, in the proxy's config:

    [plugins.query_guard]
    statements = ["DELETE", "UPDATE"]   # which statements need a WHERE
    sqlstate = "P0001"                   # the SQLSTATE the client gets
    enabled = true                       # (the plugin manager's switch)
"""
import pglast
from pglast import ast

from helios_proxy.plugins import actions
from helios_proxy.plugins.hookspecs import hookimpl

NODES = {"DELETE": ast.DeleteStmt, "UPDATE": ast.UpdateStmt}
settings = {"statements": ("DELETE", "UPDATE"), "sqlstate": "P0001"}


def configure(table):
    statements = [s.upper() for s in table.get("statements", settings["statements"])]
    unknown = set(statements) - set(NODES)
    if unknown:
        raise ValueError(f"statements: unknown {sorted(unknown)}; choose from {sorted(NODES)}")
    settings["statements"] = tuple(statements)
    settings["sqlstate"] = table.get("sqlstate", "P0001")


def unbounded(sql):
    """The first guarded statement in sql that has no WHERE clause, e.g. "DELETE", else None."""
    lowered = sql.lower()
    if not any(word.lower() in lowered for word in settings["statements"]):
        return None  # the common case costs a substring test, not a parse
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return None  # PostgreSQL will report the syntax error itself
    wanted = tuple(NODES[s] for s in settings["statements"])
    for raw in statements:
        stmt = raw.stmt
        if isinstance(stmt, ast.ExplainStmt):
            stmt = stmt.query
        if isinstance(stmt, wanted) and stmt.whereClause is None:
            return "DELETE" if isinstance(stmt, ast.DeleteStmt) else "UPDATE"
    return None


@hookimpl
def on_query_start(ctx):
    kind = unbounded(ctx.sql)
    if kind is None:
        return None
    ctx.tags["query_guard"] = f"refused {kind} without WHERE"
    return actions.reject(settings["sqlstate"], f"{kind} without WHERE refused by the query guard "
                                                 "(add a WHERE clause, e.g. WHERE true to mean it)")


@hookimpl
def register_commands(cli):
    """`helios-proxy query-guard-check SQL`: whether the guard would refuse SQL (exit 1 if so)."""
    import click

    @cli.command("query-guard-check")
    @click.argument("sql")
    def query_guard_check(sql):
        """Tell whether the query guard would refuse SQL (with the default settings)."""
        kind = unbounded(sql)
        if kind is None:
            click.echo("allowed")
            return
        click.echo(f"refused: {kind} without WHERE")
        raise SystemExit(1)
