"""Records lifecycle hooks in the file named by [plugins."tests.plugins.lifecycle"] path, and adds
an admin route GET /hello."""
from helios_proxy.plugins.hookspecs import hookimpl

state = {"path": None}


def configure(table):
    state["path"] = table["path"]


def note(text):
    with open(state["path"], "a") as f:
        f.write(text + "\n")


@hookimpl
def on_startup(proxy):
    note("startup")


@hookimpl
def on_shutdown(proxy):
    note("shutdown")


@hookimpl
def on_client_connect(session):
    note(f"connect {session.user}")


@hookimpl
def on_client_disconnect(session, reason):
    note(f"disconnect {session.user}")


@hookimpl
def on_topology_change(event):
    note(f"topology {type(event).__name__}")


@hookimpl
def register_admin_routes(app):
    app.add_url_rule("/hello", "hello", lambda: {"hello": "from a plugin"})
