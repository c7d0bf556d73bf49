"""POST /api/sql: SQL from the admin API, treated like a client's query. It passes the same stage
chain (plugins' on_query_start may refuse or rewrite it, on_query_complete sees it), is routed like
a client's (reads to a standby that has replayed the API's own last write, writes to the primary,
waiting in the switchover buffer during a failover), and runs on a connection of its own, opened
for the request and closed after it: nothing it does can reach a client's pooled connection.
"""
import itertools
import time

from flask import Blueprint, jsonify, request

from ..frontend.identity import Identity
from .. import pipeline
from ..backend.connection import ServerConnection
from ..backend.credentials import Credentials
from ..errors import BackendError, ProxyError
from ..pipeline.stage import Action
from ..plugins.actions import Outcome
from ..routing.classify import BEGIN_READ_ONLY, READ
from .common import ApiError, json_body, proxy_of

bp = Blueprint("sql", __name__)
APPLICATION_NAME = "helios-api-sql"
_ids = itertools.count(1)


class ApiSession:
    """What stages and plugins see of an /api/sql request (a ClientSession's public face)."""
    journal = None  # (its statements run on connections of its own: nothing to replay)

    def __init__(self, proxy, user, database, peer):
        self.proxy = proxy
        self.identity = identity = Identity(f"api-{next(_ids)}", peer)
        identity.user, identity.database, identity.mode = user, database, "api"

    def __repr__(self):
        who = self.identity
        return f"<api session {who.id} {who.peer[0]} user={who.user} db={who.database}>"


@bp.post("/api/sql")
def api_sql():
    """{"sql": TEXT, "params": [..]?, "database": NAME?, "max_rows": N?} -> columns, rows, node."""
    proxy = proxy_of()
    cfg = proxy.config.admin
    if not cfg.sql_enabled:
        raise ApiError(403, "POST /api/sql is off (admin.sql_enabled = false)")
    body = json_body()
    sql, params = body.get("sql"), body.get("params", [])
    database = body.get("database", "postgres")
    max_rows = body.get("max_rows", cfg.sql_max_rows)
    if not isinstance(sql, str) or not sql.strip():
        raise ApiError(400, '"sql" must be a non-empty string')
    if not isinstance(params, list) or not all(p is None or isinstance(p, (str, int, float)) for p in params):
        raise ApiError(400, '"params" must be a list of strings, numbers or nulls')
    if not isinstance(database, str) or not database:
        raise ApiError(400, '"database" must be a string')
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
        raise ApiError(400, '"max_rows" must be a positive integer')
    max_rows = min(max_rows, cfg.sql_max_rows)
    params = [None if p is None else str(p) for p in params]
    session = ApiSession(proxy, cfg.sql_user, database, (request.remote_addr or "", 0))
    ctx = pipeline.QueryContext(session, sql, "extended")
    result = pipeline.run(proxy.stages, ctx)
    if result.action is not Action.CONTINUE:
        complete(proxy, ctx, error=result.sqlstate, tag="proxy answer")
        if result.action is Action.REJECT:
            return jsonify(error=result.message, sqlstate=result.sqlstate), 400
        raise ApiError(400, "the query was answered by the proxy itself; nothing to return through the API")
    try:
        out = run_sql(proxy, ctx.sql, params, database, max_rows)
    except BackendError as e:
        complete(proxy, ctx, error=e.sqlstate)
        if e.fields:
            return jsonify(error=e.message, sqlstate=e.sqlstate, detail=e.detail), 400
        raise ApiError(502, f"server: {e.message}") from None
    except ProxyError as e:
        complete(proxy, ctx, error=e.sqlstate)
        raise ApiError(503, f"{e.sqlstate} {e.message}") from None
    except OSError as e:
        raise ApiError(502, f"server connection lost: {e}") from None
    complete(proxy, ctx, tag=out.pop("tag"), rows=out["row_count"], node=out["node"])
    return jsonify(out)


def complete(proxy, ctx, error=None, tag=None, rows=None, node=None):
    if proxy.plugins.complete_impls:
        proxy.plugins.query_complete(ctx, Outcome(time.monotonic() - ctx.started, tag, rows, error, node))


def run_sql(proxy, sql, params, database, max_rows):
    cfg, router = proxy.config.admin, proxy.router
    creds = Credentials.from_secret(cfg.sql_user, proxy.authenticator.users.get(cfg.sql_user))
    home = proxy.config.database_nodes.get(database)
    if home is not None:  # a database with a server of its own: no routing, no read-your-writes
        return fetch(proxy, database, connect(proxy, home, database, creds), sql, params, max_rows, home, "write")
    if router.on:
        router.ensure_catalog(database, proxy.pools.get(proxy.buffer.primary(), database, creds))
    read = router.on and router.classifier.classify(sql, database) in (READ, BEGIN_READ_ONLY)
    node = router.pick("standby") if read else None
    server = None
    if node is not None:
        try:
            server = connect(proxy, node, database, creds)
            if proxy.api_ryw_lsn and not router.caught_up(node, server, proxy.api_ryw_lsn):
                server.close()
                server = None
        except (BackendError, OSError):
            server = None
    if server is None:
        node = proxy.buffer.primary()
        server = connect(proxy, node, database, creds)

    def remember_write(server):  # the WAL position later reads through the API must see
        proxy.api_ryw_lsn = router.write_position(server)
    return fetch(proxy, database, server, sql, params, max_rows, node, "read" if read else "write",
                 after=None if read else remember_write)


def fetch(proxy, database, server, sql, params, max_rows, node, route, after=None):
    """Run sql on server (closing it after): the API's answer. It is the proxy's own work while it
    runs (PAUSE and a switchover's drain wait for it: own_work.py)."""
    started = time.monotonic()
    try:
        with proxy.own_work.running(database, server):
            columns, rows, truncated = server.fetch(sql, params, max_rows)
            if after is not None:
                after(server)
        return {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": truncated,
                "node": node.name, "route": route,
                "seconds": round(time.monotonic() - started, 6), "tag": server.last_tag}
    finally:
        server.close()


def connect(proxy, node, database, creds):
    """A connection of the request's own, with the API's statement timeout from the start."""
    timeout_ms = str(int(proxy.config.admin.sql_timeout * 1000))
    return ServerConnection(node, proxy.config.server_dbname(database), creds, proxy.config).connect(
        {"application_name": APPLICATION_NAME, "statement_timeout": timeout_ms})
