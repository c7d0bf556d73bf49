"""/metrics (JSON) and /metrics/prometheus (text format, prometheus-client), both computed at the
time of the scrape from the proxy's live state and its counters (stats.py): nothing on the hot path.
Names follow pgbouncer_exporter where it has one, prefixed `helios_`."""
from flask import Blueprint, Response, jsonify
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..stats import BUCKETS
from . import views
from .common import proxy_of

bp = Blueprint("metrics", __name__)


def snapshot(proxy):
    """Every number of the proxy as one JSON-able dict."""
    clients = views.clients(proxy)
    by_state = {"active": 0, "waiting": 0, "idle": 0}
    for c in clients:
        by_state[c["state"]] += 1
    return {
        "clients": by_state, "pools": views.pools(proxy), "databases": views.stats(proxy),
        "nodes": {n["name"]: {k: n[k] for k in ("role", "healthy", "primary", "reads", "writes", "errors",
                                                  "lag_bytes", "lag_ms", "breaker")} for n in views.nodes(proxy)},
        "failovers": proxy.failover.failovers, "primary_changes": proxy.tracker.changes,
        "buffer": {"waiting": proxy.buffer.depth, "buffered": proxy.buffer.buffered,
                   "timeouts": proxy.buffer.timeouts},
        "transaction_seconds": {"buckets": list(BUCKETS), "counts": list(proxy.stats.histogram),
                                "sum": round(proxy.stats.latency_sum, 6)},
        "history": [{"t": t, "queries": q, "transactions": x} for t, q, x in proxy.stats.history],
        "plugins": {name: {"calls": proxy.plugins.calls[name], "failures": proxy.plugins.failures[name]}
                    for name in proxy.plugins.sources},
        "replay": views.replay(proxy),
        "fast_path": views.fast_path(proxy),
        "cache": cache_snapshot(proxy.cache),
        "limits": {limit["name"]: {k: limit[k] for k in ("passed", "rejected", "waited")}
                   for limit in proxy.limiter.state()},
        "queries": proxy.analytics.prometheus() if proxy.analytics is not None else [],
        "tenants": {t["name"]: {"connections": t["connections"], "queries": t["queries"], "logins": t["logins"],
                                "errors": t["errors"], "refused": t["refused_logins"] + t["rejected_queries"],
                                "bytes_in": t["bytes_in"], "bytes_out": t["bytes_out"]}
                    for t in (proxy.tenants.view(proxy.sessions) if proxy.tenants is not None else ())},
        "rewrite": {r["name"]: r["hits"] for s in proxy.stages if s.name == "rewrite" for r in s.rewriter.view()},
    }


def cache_snapshot(cache):
    """The query cache's counters and gauges (cache/), or {"enabled": False}."""
    if cache is None:
        return {"enabled": False}
    state = cache.state()
    out = {k: state[k] for k in ("enabled", "hits", "misses", "l1_hits", "l2_hits", "l3_hits", "stores",
                                  "invalidations", "invalidated_entries", "stale_fills", "entries", "bytes",
                                  "evictions")}
    out["redis_up"] = int(state["redis"]["subscribed"]) if "redis" in state else None
    out["redis_errors"] = state["redis"]["errors"] if "redis" in state else 0
    out["logical"] = {db: {"ready": int(r["ready"]), "lag_bytes": r["lag_bytes"]}
                      for db, r in state.get("logical", {}).items()}
    return out


class ProxyCollector:
    """Builds the metric families from a snapshot (a callable returning one) at each collect()."""

    def __init__(self, source):
        self.source = source

    def collect(self):
        s = self.source()
        g = GaugeMetricFamily("helios_client_connections", "Client connections by state.", labels=["state"])
        for state, n in s["clients"].items():
            g.add_metric([state], n)
        yield g
        labels = ["node", "database", "user"]
        sv = GaugeMetricFamily("helios_server_connections", "Server connections by state and pool.",
                               labels=labels + ["state"])
        waiting = GaugeMetricFamily("helios_pool_waiting_clients", "Clients waiting for a server connection.",
                                    labels=labels)
        maxwait = GaugeMetricFamily("helios_pool_maxwait_seconds", "Longest current wait in the pool.",
                                    labels=labels)
        for p in s["pools"]:
            key = [p["node"], p["database"], p["user"]]
            sv.add_metric(key + ["active"], p["sv_active"])
            sv.add_metric(key + ["idle"], p["sv_idle"])
            waiting.add_metric(key, p["cl_waiting"])
            maxwait.add_metric(key, p["maxwait"])
        yield from (sv, waiting, maxwait)
        for name, field, doc in (("queries", "total_query_count", "Queries (Query and Execute messages)."),
                                 ("transactions", "total_xact_count", "Transactions ended at ReadyForQuery idle."),
                                 ("received_bytes", "total_received", "Bytes received from clients."),
                                 ("sent_bytes", "total_sent", "Bytes sent to clients."),
                                 ("client_wait_seconds", "total_wait_time_s", "Time clients waited for a server.")):
            c = CounterMetricFamily(f"helios_{name}", doc, labels=["database"])
            for row in s["databases"]:
                c.add_metric([row["database"]], row[field])
            yield c
        leases = CounterMetricFamily("helios_node_leases", "Server leases per node and route (in pooled modes, "
                                     "transactions).", labels=["node", "route"])
        errors = CounterMetricFamily("helios_node_errors", "ErrorResponses from each node.", labels=["node"])
        healthy = GaugeMetricFamily("helios_node_healthy", "1 when the node passes its health probes.",
                                    labels=["node"])
        primary = GaugeMetricFamily("helios_node_primary", "1 for the confirmed primary.", labels=["node"])
        lag = GaugeMetricFamily("helios_replication_lag_bytes", "Standby replay lag in WAL bytes.", labels=["node"])
        lag_s = GaugeMetricFamily("helios_replication_lag_seconds", "Standby replay delay.", labels=["node"])
        for name, n in s["nodes"].items():
            leases.add_metric([name, "read"], n["reads"])
            leases.add_metric([name, "write"], n["writes"])
            errors.add_metric([name], n["errors"])
            healthy.add_metric([name], 1 if n["healthy"] else 0)
            primary.add_metric([name], 1 if n["primary"] else 0)
            if n["lag_bytes"] is not None:
                lag.add_metric([name], n["lag_bytes"])
                lag_s.add_metric([name], (n["lag_ms"] or 0) / 1000)
        yield from (leases, errors, healthy, primary, lag, lag_s)
        breakers = GaugeMetricFamily("helios_breaker_open", "1 while the node's circuit breaker keeps reads "
                                     "away (open), 0.5 half open, 0 closed.", labels=["node"])
        trips = CounterMetricFamily("helios_breaker_trips", "Times the node's breaker opened.", labels=["node"])
        for name, n in s["nodes"].items():
            if n.get("breaker"):
                breakers.add_metric([name], {"open": 1, "half_open": 0.5}.get(n["breaker"]["state"], 0))
                trips.add_metric([name], n["breaker"]["trips"])
        yield from (breakers, trips)
        yield CounterMetricFamily("helios_failovers", "Promotions done by the proxy.", value=s["failovers"])
        yield GaugeMetricFamily("helios_switchover_buffer_depth", "Clients waiting for a primary.",
                                value=s["buffer"]["waiting"])
        yield CounterMetricFamily("helios_switchover_buffer_timeouts", "Clients that gave up waiting (57P03).",
                                  value=s["buffer"]["timeouts"])
        calls = CounterMetricFamily("helios_plugin_calls", "Hook calls per plugin.", labels=["plugin"])
        failures = CounterMetricFamily("helios_plugin_failures", "Plugin calls that raised, trapped or overran "
                                       "their budget.", labels=["plugin"])
        for name, counts in s["plugins"].items():
            calls.add_metric([name], counts["calls"])
            failures.add_metric([name], counts["failures"])
        yield from (calls, failures)
        replay = CounterMetricFamily("helios_replay_transactions", "Transactions caught by a failover, by "
                                     "outcome (continuity/replay.py).", labels=["outcome"])
        for outcome in ("replayed", "aborted", "in_doubt_committed", "in_doubt_replayed", "unresolved",
                        "not_replayable", "over_limit", "failed"):
            replay.add_metric([outcome], s["replay"][outcome])
        yield replay
        fast = CounterMetricFamily("helios_fast_path_requests", "Requests the fast path took (hit) or handed to "
                                   "their session's greenlet, by reason (frontend/fastpath.py).", labels=["outcome"])
        fast.add_metric(["hit"], s["fast_path"]["hits"])
        for reason, n in sorted(s["fast_path"]["misses_by_reason"].items()):
            fast.add_metric([reason], n)
        yield fast
        yield CounterMetricFamily("helios_fast_path_queued", "Requests the fast path had wait in their pool's "
                                  "line without a greenlet (frontend/queued.py Queued).",
                                  value=s["fast_path"].get("queued", 0))
        yield GaugeMetricFamily("helios_replay_journal_bytes", "Bytes of requests journaled now.",
                                value=s["replay"]["journal_bytes"])
        yield from cache_families(s["cache"])
        if s.get("limits"):
            limited = CounterMetricFamily("helios_limit_queries", "Queries by rate limit and outcome "
                                          "([[limits]]).", labels=["limit", "outcome"])
            for name, counts in s["limits"].items():
                for outcome, n in counts.items():
                    limited.add_metric([name, outcome], n)
            yield limited
        if s.get("queries"):  # (analytics: the shapes with the most time, a bounded number of series)
            families = {k: CounterMetricFamily(f"helios_query_{k}", text, labels=["fingerprint", "query"])
                        for k, text in (("calls", "Executions of the query shape (analytics)."),
                                        ("seconds", "Time from the client's query to its completion."),
                                        ("errors", "Executions that ended in an error."))}
            for q in s["queries"]:
                for k, family in families.items():
                    family.add_metric([q["fingerprint"], q["query"]], q[k])
            yield from families.values()
        if s.get("tenants"):
            connected = GaugeMetricFamily("helios_tenant_connections", "Client connections of the tenant now.",
                                          labels=["tenant"])
            counted = {k: CounterMetricFamily(f"helios_tenant_{k}", text, labels=["tenant"]) for k, text in (
                ("queries", "Queries of the tenant."), ("logins", "Logins of the tenant."),
                ("errors", "Errors the server answered the tenant's queries."),
                ("bytes_in", "Bytes the tenant's clients sent."), ("bytes_out", "Bytes the tenant's clients got."),
                ("refused", "Logins and queries of the tenant refused (quota, isolation, qps)."))}
            for name, t in s["tenants"].items():
                connected.add_metric([name], t["connections"])
                for k, family in counted.items():
                    family.add_metric([name], t[k])
            yield connected
            yield from counted.values()
        if s.get("rewrite"):
            hits = CounterMetricFamily("helios_rewrite_hits", "Queries a rewrite rule changed.", labels=["rule"])
            for name, n in s["rewrite"].items():
                hits.add_metric([name], n)
            yield hits
        h = s["transaction_seconds"]
        cumulative, buckets = 0, []
        for bound, count in zip(list(h["buckets"]) + ["+Inf"], h["counts"]):
            cumulative += count
            buckets.append((str(bound), cumulative))
        yield HistogramMetricFamily("helios_transaction_duration_seconds", "Time from lease to release of a "
                                    "server connection (pooled modes).", buckets=buckets, sum_value=h["sum"])


def cache_families(c):
    if not c.get("enabled"):
        return
    lookups = CounterMetricFamily("helios_cache_lookups", "Query cache lookups by result and tier (cache/).",
                                  labels=["result"])
    for result in ("l1_hits", "l2_hits", "misses"):
        lookups.add_metric([result[:-1] if result != "misses" else "miss"], c[result])
    yield lookups
    yield CounterMetricFamily("helios_cache_invalidations", "Invalidations (writes, DDL, other proxies, the "
                              "logical slot).", value=c["invalidations"])
    yield CounterMetricFamily("helios_cache_stale_fills", "Answers not stored: a write touched their tables "
                              "while they were in flight.", value=c["stale_fills"])
    yield GaugeMetricFamily("helios_cache_entries", "Entries in the hot tier.", value=c["entries"])
    yield GaugeMetricFamily("helios_cache_bytes", "Bytes in the hot tier.", value=c["bytes"])
    if c["redis_up"] is not None:
        yield GaugeMetricFamily("helios_cache_redis_up", "1 while the shared tier (Redis) is reachable and "
                                "heard.", value=c["redis_up"])
        yield CounterMetricFamily("helios_cache_redis_errors", "Failed calls to Redis.", value=c["redis_errors"])
    if c["logical"]:
        ready = GaugeMetricFamily("helios_cache_logical_slot_ready", "1 while the database's logical slot is "
                                  "read (0: not cached).", labels=["database"])
        lag = GaugeMetricFamily("helios_cache_logical_slot_lag_bytes", "WAL the slot holds behind the primary "
                                "(alert well below cache.logical_max_lag_bytes).", labels=["database"])
        for db, r in c["logical"].items():
            ready.add_metric([db], r["ready"])
            lag.add_metric([db], r["lag_bytes"])
        yield from (ready, lag)


@bp.get("/metrics")
def metrics_json():
    return jsonify(snapshot(proxy_of()))


@bp.get("/metrics/prometheus")
def metrics_prometheus():
    proxy = proxy_of()
    return prometheus_response(lambda: snapshot(proxy))


def prometheus_response(source):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(source))
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
