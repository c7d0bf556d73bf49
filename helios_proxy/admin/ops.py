"""Operations: POST /reload, /pause, /resume (all or one database), and POST /api/sql, which runs
SQL through the same routing as clients: reads to a standby (one that has replayed the API's own
last write), writes to the primary (waiting in the switchover buffer during a failover)."""
import time

from flask import Blueprint, jsonify

from ..backend.credentials import Credentials
from ..errors import BackendError, ProxyError
from ..routing.classify import BEGIN_READ_ONLY, READ
from .common import ApiError, json_body, proxy_of

bp = Blueprint("ops", __name__)


@bp.post("/reload")
def reload():
    result = proxy_of().reload()
    return jsonify(result), 200 if result["reloaded"] else 400


def _database(body):
    database = body.get("database")
    if database is not None and not isinstance(database, str):
        raise ApiError(400, '"database" must be a string')
    return database


@bp.post("/pause")
def pause():
    """{"database": NAME?, "timeout": seconds?}: hold new transactions, wait for running ones."""
    body = json_body()
    database = _database(body)
    timeout = body.get("timeout", 30)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 <= timeout <= 3600:
        raise ApiError(400, '"timeout" must be a number of seconds between 0 and 3600')
    busy = proxy_of().pause(database, float(timeout))
    return jsonify(paused=database or "all", still_active=busy)


@bp.post("/resume")
def resume():
    database = _database(json_body())
    if not proxy_of().resume(database):
        raise ApiError(409, f"{database or 'all'} is not paused")
    return jsonify(resumed=database or "all")


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
    try:
        return jsonify(run_sql(proxy, sql, params, database, max_rows))
    except BackendError as e:
        if e.fields:
            return jsonify(error=e.message, sqlstate=e.sqlstate, detail=e.detail), 400
        raise ApiError(502, f"server: {e.message}") from None
    except ProxyError as e:
        raise ApiError(503, f"{e.sqlstate} {e.message}") from None
    except OSError as e:
        raise ApiError(502, f"server connection lost: {e}") from None


def run_sql(proxy, sql, params, database, max_rows):
    cfg, router = proxy.config.admin, proxy.router
    creds = Credentials.from_secret(cfg.sql_user, proxy.authenticator.users.get(cfg.sql_user))
    if router.on:
        router.ensure_catalog(database, proxy.pools.get(proxy.buffer.primary(), database, creds))
    read = router.on and router.classifier.classify(sql, database) in (READ, BEGIN_READ_ONLY)
    node = router.pick("standby") if read else None
    pool = server = None
    if node is not None:
        pool = proxy.pools.get(node, database, creds)
        try:
            server = pool.acquire()
        except (BackendError, OSError):
            server = None
        if server is not None and proxy.api_ryw_lsn and not router.caught_up(node, server, proxy.api_ryw_lsn):
            pool.release(server)
            server = None
    if server is None:
        node = proxy.buffer.primary()
        pool = proxy.pools.get(node, database, creds)
        server = pool.acquire()
    ok, started = False, time.monotonic()
    try:
        server.execute(f"SET statement_timeout = {int(cfg.sql_timeout * 1000)}")
        try:
            columns, rows, truncated = server.fetch(sql, params, max_rows)
        finally:
            server.execute("RESET statement_timeout")
        if not read:
            proxy.api_ryw_lsn = router.write_position(server)
        ok = server.tx_status == b"I"
        return {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": truncated,
                "node": node.name, "route": "read" if read else "write",
                "seconds": round(time.monotonic() - started, 6)}
    finally:
        pool.release(server, reusable=ok)
