"""The admin API of a proxy running several workers (frontend/workers.py): one endpoint for all.

Served by the arbiter on admin.listen; each worker serves the usual API on a private Unix socket and
this front asks them. Counters are added up (/stats, /pools, /metrics, /metrics/prometheus), lists of
sessions and server connections are joined (session ids are unique over the workers: worker i of n
numbers its sessions i+1, i+1+n, ...), changes go to every worker (/reload, /pause, /nodes/...),
and what only one proxy may do (/failover, /api/sql) goes to worker 0, as does every other reading
request (/nodes, /topology, /health, the status page). A switchover is done by worker 0 while the
other workers hold their clients (PAUSE) and then take the new primary from it. /workers lists the workers;
/config shows the configuration as written (each worker runs with its share of the pool sizes).
"""
import http.client
import json
import logging
import os
import socket
from urllib.parse import quote

import gevent
from flask import Response, jsonify, request
from gevent.pywsgi import WSGIServer

from ..errors import ConfigError
from .app import new_app
from .common import ApiError
from .metrics import prometheus_response

log = logging.getLogger(__name__)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
ONE_WORKER = ("/failover", "/api/sql", "/graphql")  # actions a single proxy must take


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def ask(worker, method, path, body=b"", headers=None, timeout=600):
    """(status, content type, body) of one request to a worker's private API (a switchover may
    take minutes: the timeout only guards against a worker that hangs)."""
    conn = UnixHTTPConnection(worker.socket, timeout)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", "application/json"), response.read()
    except OSError as e:
        return 502, "application/json", json.dumps({"error": f"worker {worker.index}: {e}"}).encode()
    finally:
        conn.close()


def ask_all(workers, method, path, body=b"", headers=None):
    jobs = [gevent.spawn(ask, w, method, path, body, headers) for w in workers]
    gevent.joinall(jobs)
    return [job.value for job in jobs]


def json_of(answers):
    """The decoded bodies; ApiError (the first failure as the worker gave it) unless all are 2xx."""
    for status, _, body in answers:
        if status >= 300:
            try:
                message = json.loads(body).get("error", body.decode(errors="replace"))
            except ValueError:
                message = body.decode(errors="replace")
            raise ApiError(status, message)
    return [json.loads(body) for _, _, body in answers]


# --- merging what the workers report ---------------------------------------------------------------
def add(values, keep=()):
    """Numbers added, dicts merged key by key, anything else (text, flags) as the first worker has
    it; keys in keep are never added (bucket bounds, gauges of one moment)."""
    first = values[0]
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, (int, float)):
        return round(sum(v for v in values if isinstance(v, (int, float))), 6)
    if isinstance(first, dict):
        return {k: (first[k] if k in keep else add([v.get(k) for v in values if isinstance(v, dict)], keep))
                for k in first}
    return first


def merge_rows(row_lists, key, biggest=()):
    """Rows of every worker, the rows with equal key fields added up into one (fields in biggest
    take the largest value instead, e.g. the longest wait)."""
    merged, order = {}, []
    for rows in row_lists:
        for row in rows:
            k = tuple(row.get(f) for f in key)
            if k not in merged:
                merged[k] = []
                order.append(k)
            merged[k].append(row)
    out = []
    for k in order:
        rows = merged[k]
        row = add(rows, keep=key)
        for f in biggest:
            row[f] = max(r[f] for r in rows)
        out.append(row)
    return out


def merge_fast_path(states):
    """The workers' fast path counts added up, every reason any of them saw."""
    total, reasons = add(states), {}
    for state in states:
        for reason, n in state["misses_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    total["misses_by_reason"] = reasons
    return total


def merge_snapshots(snaps):
    """One /metrics snapshot for all workers (admin/metrics.py snapshot())."""
    first = snaps[0]
    hist = [s["transaction_seconds"] for s in snaps]
    history = [{"t": h["t"], "queries": sum(s["history"][i]["queries"] for s in snaps if i < len(s["history"])),
                "transactions": sum(s["history"][i]["transactions"] for s in snaps if i < len(s["history"]))}
               for i, h in enumerate(first["history"])]
    return {
        "clients": add([s["clients"] for s in snaps]),
        "pools": merge_rows([s["pools"] for s in snaps], ("node", "database", "user"), biggest=("maxwait",)),
        "databases": merge_rows([s["databases"] for s in snaps], ("database",)),
        "nodes": {name: {**node, **{k: sum(s["nodes"].get(name, {}).get(k, 0) for s in snaps)
                                    for k in ("reads", "writes", "errors")}}
                  for name, node in first["nodes"].items()},  # health and roles: worker 0's view
        "failovers": first["failovers"], "primary_changes": first["primary_changes"],
        "buffer": add([s["buffer"] for s in snaps]),
        "transaction_seconds": {"buckets": hist[0]["buckets"],
                                "counts": [sum(c) for c in zip(*(h["counts"] for h in hist))],
                                "sum": round(sum(h["sum"] for h in hist), 6)},
        "history": history,
        "plugins": add([s["plugins"] for s in snaps]),
        "replay": add([s["replay"] for s in snaps]),
        "fast_path": merge_fast_path([s["fast_path"] for s in snaps]),
        "cache": add([s["cache"] for s in snaps]),
        "limits": add([s.get("limits", {}) for s in snaps]),
        "queries": merge_rows([s.get("queries", []) for s in snaps], ("fingerprint", "query")),
        "rewrite": add([s.get("rewrite", {}) for s in snaps]),
        "tenants": add([s.get("tenants", {}) for s in snaps]),
        "workers": len(snaps),
    }


def tag_rows(row_lists):
    return [{**row, "worker": i} for i, rows in enumerate(row_lists) for row in rows]


def create_app(arbiter):
    app = new_app("helios_proxy.admin.front", arbiter)  # (the same guards as one process's: app.py)
    workers = arbiter.workers

    def forwarded():
        path = request.full_path if request.query_string else request.path
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
        return path, request.get_data(), headers

    def passthrough(answer):
        status, ctype, body = answer
        return Response(body, status=status, content_type=ctype)

    @app.get("/workers")
    def worker_list():
        return jsonify([{"index": w.index, "pid": w.process.pid, "restarts": w.restarts,
                         "running": w.process.poll() is None and os.path.exists(w.socket)} for w in workers])

    @app.get("/config")
    def config():
        return jsonify(arbiter.config.redacted())  # as configured, not one worker's share

    @app.get("/replay")
    def replay():
        return jsonify(add(json_of(ask_all(workers, "GET", "/replay"))))

    @app.get("/fast_path")
    def fast_path():
        return jsonify(merge_fast_path(json_of(ask_all(workers, "GET", "/fast_path"))))

    @app.get("/cache")
    def cache():
        states = json_of(ask_all(workers, "GET", "/cache"))
        total = add(states, keep=("max_bytes",))
        looked = (total.get("hits") or 0) + (total.get("misses") or 0)
        if "hits" in total:
            total["hit_rate"] = round(total["hits"] / looked, 4) if looked else None
            total["fingerprints"] = [f for s in states for f in s.get("fingerprints", [])][:100]
        return jsonify(total)

    @app.get("/analytics/queries")
    def analytics_queries():
        """Every worker's shapes, added up exactly (their latency sketches merged)."""
        from ..analytics import SORTS, Stat, top
        sort = request.args.get("sort", "total_time")
        if sort not in SORTS:
            raise ApiError(400, f"sort must be one of {', '.join(SORTS)}")
        try:
            limit = max(1, min(int(request.args.get("limit", 100)), 10000))
        except ValueError:
            raise ApiError(400, "limit must be a number") from None
        stats = {}
        for rows in json_of(ask_all(workers, "GET", "/analytics/queries?raw=1&limit=10000")):
            for raw in rows:
                stat = Stat.load(raw)
                if stat.fingerprint in stats:
                    stats[stat.fingerprint].fold(stat)
                else:
                    stats[stat.fingerprint] = stat
        return jsonify([s.view() for s in top(stats.values(), sort, limit)])

    @app.get("/analytics")
    def analytics_summary():
        return jsonify(add(json_of(ask_all(workers, "GET", "/analytics"))))

    @app.get("/analytics/slow")
    def analytics_slow():
        rows = [r for worker_rows in json_of(ask_all(workers, "GET", "/analytics/slow")) for r in worker_rows]
        return jsonify(sorted(rows, key=lambda r: r["time"], reverse=True))

    @app.get("/analytics/n_plus_one")
    def analytics_n_plus_one():
        return jsonify(merge_rows(json_of(ask_all(workers, "GET", "/analytics/n_plus_one")),
                                  ("preceding_fingerprint", "fingerprint"), biggest=("count", "session")))

    @app.get("/batch")
    def batch():
        return jsonify(add(json_of(ask_all(workers, "GET", "/batch"))))

    @app.get("/rewrite")
    def rewrite():
        return jsonify(merge_rows(json_of(ask_all(workers, "GET", "/rewrite")), ("name",)))

    @app.get("/limits")
    def limits():
        """The workers' counts added up; levels are the shared table's (limits/shared.py), the same
        in every worker that saw the key."""
        rows = {}
        for worker_limits in json_of(ask_all(workers, "GET", "/limits")):
            for limit in worker_limits:
                row = rows.setdefault(limit["name"], {**limit, "passed": 0, "rejected": 0, "waited": 0,
                                                      "levels": {}})
                for k in ("passed", "rejected", "waited"):
                    row[k] += limit[k]
                row["levels"].update(limit["levels"])
        return jsonify(list(rows.values()))

    @app.get("/stats")
    def stats():
        return jsonify(merge_rows(json_of(ask_all(workers, "GET", "/stats")), ("database",)))

    @app.get("/pools")
    def pools():
        return jsonify(merge_rows(json_of(ask_all(workers, "GET", "/pools")), ("node", "database", "user"),
                                  biggest=("maxwait",)))

    @app.get("/sessions")
    def sessions():
        return jsonify(sorted(tag_rows(json_of(ask_all(workers, "GET", "/sessions"))), key=lambda r: r["id"]))

    @app.get("/servers")
    def servers():
        return jsonify(tag_rows(json_of(ask_all(workers, "GET", "/servers"))))

    @app.route("/sessions/<int:session_id>", methods=["GET", "DELETE"])
    def one_session(session_id):
        path, body, headers = forwarded()
        owner = workers[(session_id - 1) % len(workers)] if session_id > 0 else workers[0]
        return passthrough(ask(owner, request.method, path, body, headers))

    def snapshot():
        return merge_snapshots(json_of(ask_all(workers, "GET", "/metrics")))

    @app.post("/switchover")
    def switchover():
        """Worker 0 switches over; the others hold their clients meanwhile (PAUSE), learn the new
        primary from it and go on: no worker writes to the old primary after it was fenced."""
        path, body, headers = forwarded()
        others, headers = workers[1:], {**headers, "Content-Type": "application/json"}

        def tell(path, **fields):
            ask_all(others, "POST", path, json.dumps(fields).encode(), headers)
        tell("/pause", timeout=arbiter.config.failover.switchover_timeout)
        try:
            answer = ask(workers[0], "POST", path, body, headers)
            if answer[0] < 300:
                done = json.loads(answer[2])
                tell(f"/nodes/{quote(done['old'], safe='')}/disable", reason=f"switchover to {done['new']}")
                tell("/primary", node=done["new"], confirm=True)
        finally:
            tell("/resume")
        return passthrough(answer)

    @app.get("/metrics")
    def metrics():
        return jsonify(snapshot())

    @app.get("/metrics/prometheus")
    def prometheus():
        return prometheus_response(snapshot)

    @app.route("/", defaults={"rest": ""}, methods=METHODS)
    @app.route("/<path:rest>", methods=METHODS)
    def other(rest):
        path, body, headers = forwarded()
        if request.method == "GET" or request.path in ONE_WORKER:
            return passthrough(ask(workers[0], request.method, path, body, headers))
        answers = ask_all(workers, request.method, path, body, headers)
        for worker, (status, _, text) in zip(workers, answers):
            if status >= 300:
                log.warning("%s %s: worker %d answered %d: %s", request.method, request.path, worker.index,
                            status, text[:200])
        return passthrough(answers[0])

    return app


def start(arbiter):
    cfg = arbiter.config.admin
    host, _, port = cfg.listen.rpartition(":")
    server = WSGIServer((host.strip("[]"), int(port)), create_app(arbiter), log=None, error_log=None)
    try:
        server.start()
    except OSError as e:
        raise ConfigError(f"admin.listen: cannot listen on {cfg.listen}: {e.strerror or e}") from None
    log.info("admin API on http://%s for %d workers", cfg.listen, len(arbiter.workers))
    return server
