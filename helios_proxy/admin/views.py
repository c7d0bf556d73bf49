"""The rows operators look at, computed from the proxy's live state at the time of asking: the REST
API (blueprints) and the virtual admin database (frontend/admin_db.py, SHOW POOLS ...) share them.
Column names follow PgBouncer's SHOW commands where there is one."""
import time

from .. import __version__
from ..frontend.fastpath import MISSES


def nodes(proxy):
    return [node(proxy, n) for n in proxy.config.nodes]


def node(proxy, n):
    tracker, health = proxy.tracker, proxy.health
    state = health.state(n)
    lag = proxy.router.lag.lag.get(n.name) if proxy.router.lag is not None else None
    role = tracker.roles.get(n.name, n.role)
    stats = proxy.router.counts().get(n.name, {})
    return {
        "name": n.name, "address": f"{n.host}:{n.port}", "configured_role": n.role, "role": role,
        "primary": tracker.primary == n.name,
        "primary_state": tracker.state if tracker.primary == n.name else None,
        "healthy": state.healthy, "in_recovery": state.in_recovery, "last_error": state.error,
        "last_check_age_s": round(time.monotonic() - state.checked, 3) if state.checked else None,
        "synchronous": health.is_sync(n) if role == "standby" else None,
        "lag_bytes": lag[0] if lag else None, "lag_ms": lag[1] if lag else None,
        "fenced": tracker.fenced.get(n.name), "stale": n.name in tracker.stale,
        "weight": n.weight, "priority": n.priority,
        "reads": stats.get("reads", 0), "writes": stats.get("writes", 0), "errors": stats.get("errors", 0),
        "breaker": proxy.router.breakers.view(n),
    }


def session_state(session):
    if session.server is not None:
        return "active"
    if session.counters.wait_started is not None or session.slot.waiting is not None:
        return "waiting"
    return "idle"


def clients(proxy):
    now = time.monotonic()
    out = []
    for s in sorted(proxy.sessions, key=lambda s: s.identity.id):
        if s.identity.user is None:
            continue
        out.append({
            "id": s.identity.id, "user": s.identity.user, "database": s.identity.database, "state": session_state(s),
            "addr": s.identity.peer[0], "port": s.identity.peer[1], "tls": s.identity.tls, "mode": s.identity.mode,
            "connect_time_s": round(now - s.identity.started, 3),
            "wait_s": round(now - s.counters.wait_started, 3) if s.counters.wait_started is not None else 0.0,
            "node": s.server.node.name if s.server is not None else None,
            "server_pid": s.server.pid if s.server is not None else None,
            "pinned": s.slot.pinned, "application_name": s.settings.values.get("application_name"),
            "queries": s.counters.queries, "transactions": s.counters.transactions,
        })
    return out


def pools(proxy):
    active = {}
    for s in list(proxy.sessions):
        lease = s.slot.lease
        if lease is not None:
            active[lease.pool.key] = active.get(lease.pool.key, 0) + 1
    now, out = time.monotonic(), []
    check_after = proxy.config.pool.check_after
    for pool in list(proxy.pools.pools.values()):
        out.append({
            "database": pool.database, "user": pool.credentials.user, "node": pool.node.name,
            "tenant": pool.credentials.partition,
            "mode": proxy.config.mode_for(pool.database, pool.credentials.user),
            "cl_active": active.get(pool.key, 0), "cl_waiting": len(pool.waiters),
            "sv_active": active.get(pool.key, 0), "sv_idle": len(pool.idle),
            # PgBouncer's: idle ones checked before their next use (pool.check_after), ones logging in
            "sv_used": sum(1 for c in pool.idle if now - c.last_used >= check_after),
            "sv_login": max(0, pool.size - len(pool.idle) - active.get(pool.key, 0)),
            "pool_size": pool.max_size,
            "maxwait": round(max((now - t for t in pool.wait_started.values()), default=0.0), 3),
        })
        out[-1]["maxwait_us"] = int(out[-1]["maxwait"] * 1_000_000)
        out[-1]["pool_mode"] = out[-1]["mode"]
    return out


def servers(proxy):
    now, out = time.monotonic(), []
    leased = {id(s.server): s for s in list(proxy.sessions) if s.server is not None}
    for pool in list(proxy.pools.pools.values()):
        conns = [(c, "idle") for c in pool.idle]
        conns += [(s.server, "active") for s in leased.values() if s.slot.lease is not None and s.slot.lease.pool is pool]
        for conn, state in conns:
            client = leased.get(id(conn))
            out.append({"node": pool.node.name, "database": pool.database, "user": pool.credentials.user,
                        "state": state, "pid": conn.pid, "client": client.identity.id if client else None,
                        "connect_time_s": round(now - conn.created, 3),
                        "idle_s": round(now - conn.last_used, 3) if state == "idle" else 0.0,
                        "close_needed": int(conn.generation != pool.generation)})
    return out


def stats(proxy):
    """PgBouncer's SHOW STATS: totals per database, and avg_* per second (over the proxy's life
    here, where PgBouncer averages over its last stats_period)."""
    rows = []
    uptime = max(1.0, time.time() - proxy.stats.started)
    for database, t in sorted(proxy.stats.by_database(proxy.sessions).items()):
        rows.append({"database": database, "total_xact_count": t["transactions"],
                     "total_query_count": t["queries"], "total_received": t["bytes_in"],
                     "total_sent": t["bytes_out"], "total_wait_time_s": round(t["wait_seconds"], 6),
                     "total_wait_time": int(t["wait_seconds"] * 1_000_000),
                     "avg_xact_count": round(t["transactions"] / uptime, 3),
                     "avg_query_count": round(t["queries"] / uptime, 3),
                     "avg_recv": round(t["bytes_in"] / uptime, 3), "avg_sent": round(t["bytes_out"] / uptime, 3),
                     "avg_wait_time": round(t["wait_seconds"] * 1_000_000 / max(1, t["transactions"]), 3),
                     "total_fast_path_hits": t["fast_hits"], "total_fast_path_misses": t["fast_misses"]})
    return rows


def databases(proxy):
    """PgBouncer's SHOW DATABASES columns: every configured or used database, on the primary or
    on its own host ([databases.NAME] host), under its server-side name (dbname)."""
    cfg, primary = proxy.config, proxy.tracker.node(proxy.tracker.primary)
    names = sorted(set(cfg.databases) | {p.database for p in proxy.pools.pools.values()})
    out = []
    for name in names:
        pools = [p for p in proxy.pools.pools.values() if p.database == name]
        node = cfg.database_nodes.get(name, primary)
        out.append({"name": name, "host": node.host if node else None, "port": node.port if node else None,
                    "database": cfg.server_dbname(name), "force_user": None,
                    "pool_size": cfg.pool_setting(name, "max_size"),
                    "min_pool_size": cfg.pool_setting(name, "min_size"), "reserve_pool": cfg.pool.reserve_size,
                    "pool_mode": cfg.pool_setting(name, "mode"), "max_connections": cfg.pool.max_db_connections,
                    "current_connections": sum(p.size for p in pools),
                    "paused": int(None in proxy.paused or name in proxy.paused),
                    "disabled": int(name in proxy.disabled)})
    return out


def config(proxy):
    """PgBouncer's SHOW CONFIG columns: key (section.key here), value, default, changeable (on
    reload); secrets shown as ********."""
    from ..config.schema import SETTINGS
    redacted = proxy.config.redacted()
    return [{"key": s.path, "value": _text(redacted[s.section][s.key]), "default": _text(s.default),
             "changeable": "yes" if s.reloadable else "no"} for s in SETTINGS]


def _text(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def version():
    return {"name": "HeliosProxy", "version": __version__}


def replay(proxy):
    """Transaction replay counters (continuity/journal.py STATS) and the bytes journaled right now."""
    from ..continuity.journal import JOURNALS, STATS
    return dict(STATS.as_dict(sum(j.size for j in list(JOURNALS))), enabled=proxy.config.replay.enabled)


def fast_path(proxy):
    """The fast path (frontend/fastpath.py): requests it took, those it had wait in their pool's line
    (more clients than server connections), and those it handed to their session's greenlet, by reason."""
    totals = proxy.stats.by_database(proxy.sessions).values()
    return {"enabled": proxy.config.server.fast_path, "stages_allow": proxy.stages_in_callback,
            "hits": sum(t["fast_hits"] for t in totals), "misses": sum(t["fast_misses"] for t in totals),
            "queued": sum(t["fast_queued"] for t in totals),
            "misses_by_reason": dict(MISSES)}
