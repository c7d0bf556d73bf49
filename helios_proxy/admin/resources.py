"""What the proxy holds: /config (secrets redacted), /pools, /sessions (and DELETE one), /stats, /replay,
/limits, /version."""
from flask import Blueprint, jsonify

from . import views
from .common import ApiError, proxy_of

bp = Blueprint("resources", __name__)


@bp.get("/config")
def config():
    return jsonify(proxy_of().config.redacted())


@bp.get("/pools")
def pools():
    return jsonify(views.pools(proxy_of()))


@bp.get("/servers")
def servers():
    return jsonify(views.servers(proxy_of()))


@bp.get("/sessions")
def sessions():
    return jsonify(views.clients(proxy_of()))


@bp.get("/sessions/<int:session_id>")
def session(session_id):
    for row in views.clients(proxy_of()):
        if row["id"] == session_id:
            return jsonify(row)
    raise ApiError(404, f"no session {session_id}")


@bp.delete("/sessions/<int:session_id>")
def kill_session(session_id):
    """End a client's connection (FATAL 57P01 to the client); its server connection is cleaned up."""
    proxy = proxy_of()
    for s in list(proxy.sessions):
        if s.identity.id == session_id:
            s.terminate("terminating connection due to administrator command")
            return jsonify(killed=session_id)
    raise ApiError(404, f"no session {session_id}")


@bp.get("/stats")
def stats():
    return jsonify(views.stats(proxy_of()))


@bp.get("/fast_path")
def fast_path():
    """Requests the fast path took, and those it handed to their session's greenlet, by reason."""
    return jsonify(views.fast_path(proxy_of()))


@bp.get("/replay")
def replay():
    """Transaction replay across failovers: replayed, aborted (40001), commits in doubt resolved."""
    return jsonify(views.replay(proxy_of()))


@bp.get("/version")
def version():
    return jsonify(views.version())


@bp.get("/batch")
def batch():
    """INSERT coalescing: batches, rows, rows per batch, fallbacks (a batch refused: rows run alone),
    errors, inserts passed through (tables with row triggers or rules)."""
    proxy = proxy_of()
    return jsonify({"enabled": proxy.config.batch.enabled, **proxy.batches.state()})


@bp.get("/limits")
def limits():
    """The rate limiter ([[limits]]): per limit, queries passed, rejected (53400) and waited, and
    the current level of the busiest keys (tokens left, queries in the window, queries running)."""
    return jsonify(proxy_of().limiter.state())
