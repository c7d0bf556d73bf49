"""Operations: POST /reload, /pause, /resume (all or one database). (POST /api/sql: sql.py.)"""
from flask import Blueprint, jsonify

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
    """{"database": NAME?}: end a PAUSE (of that database, or of all); without a database, a
    SUSPEND too (the console that ran it may be gone: nothing else could get in)."""
    database = _database(json_body())
    proxy = proxy_of()
    resumed = proxy.resume(database)
    if database is None:
        resumed = proxy.resume_suspended() or resumed
    if not resumed:
        raise ApiError(409, f"{database or 'all'} is neither paused nor suspended")
    return jsonify(resumed=database or "all")
