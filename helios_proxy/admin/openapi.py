"""GET /openapi.json: the admin API described in OpenAPI 3 (the fuzz test derives its requests from it)."""
from flask import Blueprint, jsonify

from .. import __version__

bp = Blueprint("openapi", __name__)

JSON = {"application/json": {"schema": {"type": "object"}}}
ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}


def op(summary, body=None, ok="200", extra=()):
    out = {"summary": summary, "responses": {ok: {"description": "ok", "content": JSON}}}
    for code in ("400", "401", "403", "404", "409", "503", *extra):
        out["responses"][code] = ERROR
    if body is not None:
        out["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return out


def obj(**props):
    return {"type": "object", "properties": props, "additionalProperties": False}


NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
SESSION = [{"name": "session_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}]
STR, NUM = {"type": "string"}, {"type": "number", "minimum": 0, "maximum": 60}
PATHS = {
    "/health": {"get": op("Overall status: primary, healthy nodes, clients.")},
    "/health/ready": {"get": op("200 while at least one node is healthy, else 503.")},
    "/health/live": {"get": op("200 while the process serves.")},
    "/nodes": {"get": op("Every node: role, health, lag, fencing, reads and writes.")},
    "/nodes/{name}": {"get": {**op("One node (by name or host:port)."), "parameters": NAME}},
    "/nodes/{name}/disable": {"post": {**op("Take a node out of traffic (in a fleet on etcd: on every member, "
                                            "unless fleet is false).", obj(reason=STR)), "parameters": NAME}},
    "/nodes/{name}/enable": {"post": {**op("Put a node back into traffic."), "parameters": NAME}},
    "/topology": {"get": op("Primary, its state, failover state, buffer, history.")},
    "/fleet": {"get": op("The fleet's live members, the primary each sees, whether they agree; "
                               "with etcd: the failover lock's holder and the last decisions.")},
    "/primary": {"post": op("Set (and confirm) the primary.", obj(node=STR, confirm={"type": "boolean"}))},
    "/primary/confirm": {"post": op("Confirm a PENDING primary.")},
    "/primary/clear": {"post": op("Clear the primary: writes wait in the buffer.")},
    "/switchover": {"post": op("Planned switchover to a standby.", obj(target=STR))},
    "/failover": {"post": op("Fence the primary and promote a standby now.", obj(target=STR))},
    "/config": {"get": op("The running configuration, secrets redacted.")},
    "/metrics": {"get": op("Every number as JSON.")},
    "/metrics/prometheus": {"get": {"summary": "Prometheus text format.",
                                    "responses": {"200": {"description": "ok",
                                                          "content": {"text/plain": {"schema": STR}}}}}},
    "/sessions": {"get": op("Client sessions (SHOW CLIENTS).")},
    "/sessions/{session_id}": {"get": {**op("One session."), "parameters": SESSION},
                               "delete": {**op("End a client's connection."), "parameters": SESSION}},
    "/pools": {"get": op("Pools (SHOW POOLS).")},
    "/servers": {"get": op("Server connections (SHOW SERVERS).")},
    "/stats": {"get": op("Per-database totals (SHOW STATS).")},
    "/fast_path": {"get": op("Requests the fast path took, and those it handed on by reason.")},
    "/replay": {"get": op("Transaction replay across failovers: replayed, aborted with 40001, commits in doubt "
                          "resolved, journal bytes.")},
    "/version": {"get": op("Version.")},
    "/limits": {"get": op("Rate limits: passed, rejected (53400), waited, current levels per key.")},
    "/cache": {"get": op("Query cache: hits and misses by tier, entries, bytes, invalidations, bypass reasons, "
                         "workload classes.")},
    "/cache/flush": {"post": op("Drop every cache entry (here, and with Redis everywhere).")},
    "/cache/invalidate": {"post": op("Invalidate a database's tables (or all of it) as a write would.", {
        "type": "object", "required": ["database"], "properties": {
            "database": STR, "tables": {"type": "array", "items": STR}}})},
    "/tenants": {"get": op("Tenants with their connections, logins, queries, refusals."),
                 "post": op("Add a tenant (kept in tenancy.tenants_file).", {
                     "type": "object", "required": ["name"], "properties": {
                         "name": STR, "isolation": {"type": "string", "enum": ["rls", "schema", "database"]},
                         "schema": STR, "database": STR, "max_client_conn": {"type": "integer", "minimum": 0},
                         "statement_timeout_ms": {"type": "integer", "minimum": 0},
                         "qps": {"type": "number", "minimum": 0}}}, ok="201")},
    "/tenants/{name}": {"get": {**op("One tenant."), "parameters": NAME},
                        "put": {**op("Replace a tenant's settings.", obj(
                            isolation={"type": "string", "enum": ["rls", "schema", "database"]}, schema=STR,
                            database=STR, max_client_conn={"type": "integer", "minimum": 0},
                            statement_timeout_ms={"type": "integer", "minimum": 0},
                            qps={"type": "number", "minimum": 0})), "parameters": NAME},
                        "delete": {**op("Remove a tenant (new logins refused)."), "parameters": NAME}},
    "/batch": {"get": op("INSERT coalescing: batches, rows per batch, fallbacks, errors.")},
    "/routing/tables": {"get": op("Schema routing: tables with temperature (declared or learned), rule, reads per "
                                  "node.")},
    "/analytics": {"get": op("Query analytics summary: shapes kept, calls, slow queries, N+1 patterns.")},
    "/analytics/queries": {"get": {**op("Query shapes (fingerprints) with calls, errors, rows, latency quantiles, "
                                        "intent."),
                                   "parameters": [
                                       {"name": "sort", "in": "query", "schema": {
                                           "type": "string", "enum": ["total_time", "calls", "mean", "p99", "errors",
                                                                      "rows", "max"]}},
                                       {"name": "limit", "in": "query",
                                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}]}},
    "/analytics/slow": {"get": op("Recent slow queries (analytics.slow_query_ms), newest first.")},
    "/analytics/n_plus_one": {"get": op("N+1 patterns with a suggested rewrite.")},
    "/analytics/reset": {"post": op("Forget the analytics numbers.")},
    "/rewrite": {"get": op("Rewrite rules in order with their hits.")},
    "/reload": {"post": op("Re-read the configuration file.")},
    "/pause": {"post": op("Hold new transactions (all, or one database).", obj(database=STR, timeout=NUM))},
    "/resume": {"post": op("Resume after /pause.", obj(database=STR))},
    "/api/sql": {"post": op("Run SQL through the proxy's routing (admin.sql_enabled).", {
        "type": "object", "required": ["sql"], "additionalProperties": False,
        "properties": {"sql": STR, "database": STR, "max_rows": {"type": "integer", "minimum": 1},
                       "params": {"type": "array", "items": {"type": ["string", "number", "null"]}}}},
        extra=("502",))},
}


@bp.get("/openapi.json")
def openapi():
    return jsonify({
        "openapi": "3.0.3",
        "info": {"title": "HeliosProxy admin API", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": PATHS,
    })
