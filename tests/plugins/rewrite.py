"""Rewrites `select 'rewrite me'` into a query the server answers differently."""
from helios_proxy.plugins import actions
from helios_proxy.plugins.hookspecs import hookimpl


@hookimpl
def on_query_start(ctx):
    if ctx.sql.strip().lower() == "select 'rewrite me'":
        return actions.rewrite("select 'rewritten by a plugin'")
    if ctx.sql.strip().lower() == "show plugin_answer":
        return actions.respond(["answer"], [["from the proxy"]])
    if ctx.sql.strip().lower() == "show plugin_rows":
        return actions.respond(["n"], [["1"], ["2"], ["3"]])
    return None


@hookimpl
def rewrite_rules():
    return [{"name": "from-plugin", "match": r"\brw_plugin_old\b", "replace": "rw_plugin_new"},
            {"name": "broken-from-plugin", "match": "(unclosed", "replace": "x"}]
