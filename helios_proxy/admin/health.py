"""Health endpoints for load balancers and orchestrators: /health, /health/ready, /health/live."""
from flask import Blueprint, jsonify

from .common import proxy_of

bp = Blueprint("health", __name__)


def summary(proxy):
    healthy = [n.name for n in proxy.config.nodes if proxy.health.healthy(n)]
    primary = proxy.tracker.current()
    paused = sorted(name or "all" for name in proxy.paused)
    status = ("ok" if primary is not None and len(healthy) == len(proxy.config.nodes) else
              "degraded" if healthy else "down")
    if status != "down" and (proxy.suspended is not None or "all" in paused):
        status = "suspended" if proxy.suspended is not None else "paused"  # (clients wait: not ok)
    return {"status": status, "suspended": proxy.suspended is not None, "paused": paused,
            "primary": primary.name if primary is not None else None, "primary_state": proxy.tracker.state,
            "healthy_nodes": healthy, "nodes": len(proxy.config.nodes), "clients": len(proxy.sessions)}


@bp.get("/health")
def health():
    return jsonify(summary(proxy_of()))


@bp.get("/health/ready")
def ready():
    """200 while at least one node is healthy (the proxy can serve something), else 503."""
    body = summary(proxy_of())
    return jsonify(body), 200 if body["healthy_nodes"] else 503


@bp.get("/health/live")
def live():
    return jsonify(status="alive")
