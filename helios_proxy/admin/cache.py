"""The query cache (cache/): GET /cache, POST /cache/flush, POST /cache/invalidate."""
from flask import Blueprint, jsonify

from .common import ApiError, feature, json_body, proxy_of

bp = Blueprint("cache", __name__)


def _cache():
    return feature("cache", "the query cache is off (cache.enabled = false)")


@bp.get("/cache")
def state():
    """Hits and misses by tier, entries, bytes, invalidations, bypass reasons, workload classes."""
    cache = proxy_of().cache
    return jsonify(cache.state() if cache is not None else {"enabled": False})


@bp.post("/cache/flush")
def flush():
    """Drop every entry: this proxy's, and (with redis_url) every proxy's and the shared tier's."""
    cache = _cache()
    entries = len(cache.hot)
    cache.flush()
    return jsonify(flushed=entries)


@bp.post("/cache/invalidate")
def invalidate():
    """{"database": NAME, "tables": [NAME, ...]} (no tables: the whole database), as a write would."""
    body = json_body()
    database, tables = body.get("database"), body.get("tables")
    if not isinstance(database, str) or not database:
        raise ApiError(400, '"database" must be a database name')
    if tables is not None and (not isinstance(tables, list) or not all(isinstance(t, str) and t for t in tables)):
        raise ApiError(400, '"tables" must be a list of table names')
    cache = _cache()
    before = len(cache.hot)
    cache.invalidate(database, None if tables is None else {t.rsplit(".", 1)[-1] for t in tables})
    return jsonify(database=database, tables=tables, invalidated=before - len(cache.hot))
