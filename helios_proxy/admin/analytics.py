"""Query analytics (analytics/) and the rewriter (rewrite/): GET /analytics/queries,
/analytics/slow, /analytics/n_plus_one, POST /analytics/reset, GET /rewrite."""
from flask import Blueprint, jsonify, request

from ..analytics import SORTS
from .common import ApiError, feature, proxy_of

bp = Blueprint("analytics", __name__)


def _analytics():
    analytics = feature("analytics", "query analytics are off (analytics.enabled = false)")
    analytics.flush()  # (the answers noted since the last flush count too)
    return analytics


@bp.get("/analytics")
def summary():
    """Shapes kept, calls, slow queries, N+1 patterns, since when."""
    analytics = proxy_of().analytics
    return jsonify(analytics.state() if analytics is not None else {"enabled": False})


@bp.get("/analytics/queries")
def queries():
    """Query shapes, most total time first (?sort=total_time|calls|mean|p99|errors|rows|max, ?limit=N)."""
    analytics = _analytics()
    sort = request.args.get("sort", "total_time")
    if sort not in SORTS:
        raise ApiError(400, f"sort must be one of {', '.join(SORTS)}")
    try:
        limit = int(request.args.get("limit", 100))
    except ValueError:
        raise ApiError(400, "limit must be a number") from None
    raw = request.args.get("raw") == "1"  # (exact numbers for admin/front.py to add up)
    return jsonify(analytics.queries(sort, max(1, min(limit, 10000)), raw))


@bp.get("/analytics/slow")
def slow():
    """The most recent slow queries (analytics.slow_query_ms), newest first."""
    return jsonify(list(reversed(_analytics().slow.recent)))


@bp.get("/analytics/n_plus_one")
def n_plus_one():
    """N+1 patterns: a shape run again and again after another, with a suggested rewrite."""
    detector = _analytics().n_plus_one
    return jsonify(detector.view() if detector is not None else [])


@bp.post("/analytics/reset")
def reset():
    """Forget every shape's numbers, the recent slow queries and the N+1 patterns."""
    _analytics().reset()
    return jsonify(reset=True)


@bp.get("/rewrite")
def rewrite():
    """The rewrite rules in order, with how often each changed a query (or would have: dry_run)."""
    stage = next((s for s in proxy_of().stages if s.name == "rewrite"), None)
    return jsonify(stage.rewriter.view() if stage is not None else [])
