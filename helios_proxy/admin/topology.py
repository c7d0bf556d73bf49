"""Topology endpoints: nodes and their state, the primary, failover and planned switchover."""
from flask import Blueprint, jsonify

from ..topology.nodeops import NodeOperationFailed
from ..topology.switchover import switchover
from . import views
from .common import ApiError, json_body, proxy_of

bp = Blueprint("topology", __name__)


def find_node(proxy, name):
    node = proxy.tracker.node(name)
    if node is None:
        for candidate in proxy.config.nodes:
            if f"{candidate.host}:{candidate.port}" == name:
                return candidate
        raise ApiError(404, f"no node {name!r}")
    return node


@bp.get("/nodes")
def nodes():
    proxy = proxy_of()
    return jsonify(views.nodes(proxy))


@bp.get("/routing/tables")
def routing_tables():
    """Tables seen or named by a [[routing.tables]] rule: temperature (declared or learned), the
    rule, reads per node, seconds since the last write through the proxy."""
    return jsonify(proxy_of().router.tables.view())


@bp.get("/nodes/<name>")
def node(name):
    proxy = proxy_of()
    return jsonify(views.node(proxy, find_node(proxy, name)))


@bp.post("/nodes/<name>/disable")
def disable(name):
    proxy = proxy_of()
    node = find_node(proxy, name)
    body = json_body()
    if proxy.tracker.primary == node.name and body.get("force") is not True:
        raise ApiError(409, f"{node.name} is the primary: disabling it stops every write until another "
                            "primary is set (switch over first, or send {\"force\": true})")
    reason = body.get("reason") or "disabled by the operator"
    fleet = proxy.failover.fleet  # (a fleet coordinated through etcd: every member takes it out)
    if fleet is not None and body.get("fleet", True):
        try:
            fleet.disable(node.name, reason)
        except OSError as e:
            raise ApiError(503, f"etcd unreachable ({e}): {node.name} not disabled for the fleet "
                                "(send {\"fleet\": false} to disable it on this member only)") from None
    else:
        proxy.tracker.fence(node.name, reason)
        proxy.pools.close_idle(node)
    return jsonify(views.node(proxy, node))


@bp.post("/nodes/<name>/enable")
def enable(name):
    proxy = proxy_of()
    node = find_node(proxy, name)
    fleet = proxy.failover.fleet
    if fleet is not None:
        try:
            fleet.enable(node.name)
        except OSError as e:
            raise ApiError(503, f"etcd unreachable ({e}): {node.name} not enabled for the fleet") from None
    proxy.tracker.enable(node.name)
    return jsonify(views.node(proxy, node))


@bp.get("/fleet")
def fleet():
    """The fleet's live members, the primary each sees and whether they agree; with etcd also the
    failover lock's holder and the last decisions."""
    proxy = proxy_of()
    if proxy.fleet is None:
        raise ApiError(404, "this proxy is in no fleet (set [fleet] dcs_url, or name and redis_url)")
    return jsonify(proxy.fleet.overview())


@bp.get("/topology")
def topology():
    proxy = proxy_of()
    tracker = proxy.tracker
    return jsonify(primary=tracker.primary, state=tracker.state, reason=tracker.reason,
                   provider=proxy.config.topology.provider, failover_mode=proxy.config.failover.mode,
                   failover_state=proxy.failover.state, failovers=proxy.failover.failovers,
                   buffer={"waiting": proxy.buffer.depth, "paused": proxy.buffer.paused,
                           "buffered": proxy.buffer.buffered, "timeouts": proxy.buffer.timeouts,
                           "longest_wait_s": round(proxy.buffer.longest_wait, 3)},
                   history=proxy.failover.history)


@bp.post("/primary")
def set_primary():
    """Standalone provider / operator: {"node": NAME, "confirm": true}."""
    proxy = proxy_of()
    body = json_body()
    node = find_node(proxy, str(body.get("node", "")))
    proxy.tracker.enable(node.name)
    proxy.tracker.stale.discard(node.name)
    proxy.tracker.set_primary(node.name, "set by the operator")
    if body.get("confirm", True):
        proxy.tracker.confirm_primary("confirmed by the operator")
    return topology()


@bp.post("/primary/confirm")
def confirm_primary():
    proxy_of().tracker.confirm_primary("confirmed by the operator")
    return topology()


@bp.post("/primary/clear")
def clear_primary():
    proxy_of().tracker.clear_primary("cleared by the operator")
    return topology()


@bp.post("/switchover")
def post_switchover():
    """{"target": NAME}: planned switchover; answers when it is done (or failed)."""
    proxy = proxy_of()
    target = json_body().get("target")
    if not target:
        raise ApiError(400, 'give the target standby: {"target": "NAME"}')
    find_node(proxy, str(target))
    try:
        result = switchover(proxy, str(target))
    except NodeOperationFailed as e:
        raise ApiError(409, f"switchover failed: {e.message}") from None
    return jsonify(result)


@bp.post("/failover")
def post_failover():
    """{"target": NAME} or {}: promote that standby (or the best one) now, whatever the primary's state."""
    proxy = proxy_of()
    target = json_body().get("target")
    if target:
        find_node(proxy, str(target))
    old = proxy.tracker.primary
    try:
        done = proxy.failover.failover(old, target, fence=True)
    except NodeOperationFailed as e:
        raise ApiError(409, f"failover failed: {e.message}") from None
    if not done:
        raise ApiError(409, "failover failed: no standby can be promoted")
    return topology()
