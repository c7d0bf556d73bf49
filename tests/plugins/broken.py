"""Fails or dawdles on demand: `select 'boom'` raises, `select 'slow'` sleeps 1 s (cooperatively)."""
import gevent

from helios_proxy.plugins.hookspecs import hookimpl


@hookimpl
def on_query_start(ctx):
    if "'boom'" in ctx.sql:
        raise RuntimeError("boom")
    if "'slow'" in ctx.sql:
        gevent.sleep(1)
    return None
