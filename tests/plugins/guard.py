"""Refuses `delete from guarded_t` without WHERE; writes every on_query_complete to the file named
by [plugins."tests.plugins.guard"] path (one line: user, query, error)."""
from helios_proxy.plugins import actions
from helios_proxy.plugins.hookspecs import hookimpl

state = {"path": None}


def configure(table):
    state["path"] = table.get("path")


@hookimpl
def on_query_start(ctx):
    text = " ".join(ctx.sql.lower().split())
    if text.startswith("delete from guarded_t") and " where " not in text:
        return actions.reject("P0001", "DELETE without WHERE refused by the test guard")
    return None


@hookimpl
def on_query_complete(ctx, outcome):
    if state["path"]:
        with open(state["path"], "a") as f:
            f.write(f"{ctx.session.user}|{ctx.sql}|{outcome.error}\n")
