"""The admin console's PgBouncer muscle memory (admin_db.py serves the console): SHOW LISTS | USERS |
MEM | FDS | SOCKETS | TOTALS | STATE, KILL_CLIENT id, DISABLE db / ENABLE db, SET key = value,
SHUTDOWN. Columns follow PgBouncer's where the proxy has the same thing; what it does not have
(DNS caches, per-object slab allocators) is not shown as zeros."""
import copy
import gc
import logging
import resource

from ..admin import views
from ..config import runtime_value
from ..errors import ConfigError
from ..protocol import codec, messages as m

log = logging.getLogger(__name__)
OBJECT_NOT_IN_STATE, UNDEFINED_OBJECT, SYNTAX_ERROR = "55000", "42704", "42601"
# PgBouncer's names for SET, as ours (SET also takes section.key of any reloadable setting)
PGBOUNCER_NAMES = {"default_pool_size": "pool.max_size", "min_pool_size": "pool.min_size",
                   "reserve_pool_size": "pool.reserve_size", "max_client_conn": "server.max_client_conn",
                   "server_idle_timeout": "pool.idle_timeout", "server_lifetime": "pool.server_lifetime",
                   "query_timeout": "pool.query_timeout", "server_check_delay": "pool.check_after",
                   "query_wait_timeout": "pool.acquire_timeout", "client_idle_timeout": "server.client_idle_timeout",
                   "client_login_timeout": "server.client_login_timeout",
                   "max_db_connections": "pool.max_db_connections", "max_user_connections": "pool.max_user_connections"}


def complete(tag):
    return codec.message(m.COMMAND_COMPLETE, codec.cstr(tag))


def lists(proxy):
    sessions = [s for s in list(proxy.sessions) if s.identity.user is not None]
    pools = list(proxy.pools.pools.values())
    idle = sum(len(p.idle) for p in pools)
    return [{"list": name, "items": n} for name, n in (
        ("databases", len({p.database for p in pools} | set(proxy.config.databases))),
        ("users", len({s.identity.user for s in sessions} | {p.credentials.user for p in pools})),
        ("pools", len(pools)), ("used_clients", len(sessions)),
        ("login_clients", sum(1 for s in proxy.sessions if s.identity.user is None or not s.identity.authenticated)),
        ("free_servers", idle), ("used_servers", sum(p.size for p in pools) - idle))]


def users(proxy):
    cfg = proxy.config
    names = sorted({s.identity.user for s in list(proxy.sessions) if s.identity.user} | set(cfg.users)
                   | {p.credentials.user for p in proxy.pools.pools.values()})
    return [{"name": name, "pool_mode": cfg.mode_for(None, name)} for name in names]


def mem(proxy):
    """The process's memory, and how many of the objects it is made of."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return [{"name": "process (peak rss)", "size": rss, "used": rss, "free": 0, "memtotal": rss},
            {"name": "client sessions", "size": len(proxy.sessions), "used": len(proxy.sessions), "free": 0,
             "memtotal": 0},
            {"name": "server connections", "size": sum(p.size for p in proxy.pools.pools.values()),
             "used": sum(p.size - len(p.idle) for p in proxy.pools.pools.values()),
             "free": sum(len(p.idle) for p in proxy.pools.pools.values()), "memtotal": 0},
            {"name": "python objects", "size": len(gc.get_objects()), "used": len(gc.get_objects()), "free": 0,
             "memtotal": 0}]


def _sockets(proxy):
    for s in sorted((s for s in list(proxy.sessions) if s.identity.user is not None), key=lambda s: s.identity.id):
        yield {"type": "client", "fd": _fd(s.sock), "user": s.identity.user, "database": s.identity.database,
               "addr": s.identity.peer[0], "port": s.identity.peer[1], "state": views.session_state(s),
               "link": s.server.pid if s.server is not None else None, "tls": s.identity.tls}
    leased = {id(s.server): s for s in list(proxy.sessions) if s.server is not None}
    for pool in list(proxy.pools.pools.values()):
        conns = [(c, "idle") for c in pool.idle] + [(s.server, "active") for s in leased.values()
                                                    if s.slot.lease is not None and s.slot.lease.pool is pool]
        for conn, state in conns:
            client = leased.get(id(conn))
            yield {"type": "server", "fd": _fd(conn.sock), "user": pool.credentials.user, "database": pool.database,
                   "addr": pool.node.host, "port": pool.node.port, "state": state,
                   "link": client.identity.id if client is not None else None, "tls": hasattr(conn.sock, "cipher")}


def _fd(sock):
    try:
        return sock.fileno()
    except (OSError, AttributeError):
        return -1


def fds(proxy):
    return [{"fd": s["fd"], "task": "client" if s["type"] == "client" else "server", "user": s["user"],
             "database": s["database"], "addr": s["addr"], "port": s["port"]} for s in _sockets(proxy)]


def sockets(proxy):
    return list(_sockets(proxy))


def totals(proxy):
    """SHOW STATS summed over the databases, as name/value rows."""
    rows = views.stats(proxy)
    keys = [k for k in (rows[0] if rows else {}) if k != "database" and not k.startswith("avg_")]
    out = [{"name": k, "value": sum(r[k] for r in rows)} for k in keys]
    out += [{"name": k, "value": round(sum(r[k] for r in rows), 3)} for k in (rows[0] if rows else {})
            if k.startswith("avg_")]
    return out


def state(proxy):
    return [{"key": "active", "value": "no" if proxy.suspended is not None or None in proxy.paused else "yes"},
            {"key": "paused", "value": ", ".join(sorted(d or "all" for d in proxy.paused)) or "no"},
            {"key": "suspended", "value": "yes" if proxy.suspended is not None else "no"},
            {"key": "disabled", "value": ", ".join(sorted(proxy.disabled)) or "no"}]


def command(session, verb, words, sql):
    """The bytes answering one of this module's commands, or None when it is not one."""
    proxy = session.proxy
    if verb == "kill_client" and len(words) == 2:
        target = next((s for s in list(proxy.sessions) if str(s.identity.id) == words[1] and not s.identity.admin),
                      None)
        if target is None:
            return codec.error_response(UNDEFINED_OBJECT, f"no client {words[1]} (SHOW CLIENTS: id)")
        target.terminate(f"terminating connection: KILL_CLIENT {words[1]} (admin console)")
        return complete("KILL_CLIENT")
    if verb in ("disable", "enable") and len(words) == 2:
        database = words[1]
        if verb == "disable":
            proxy.disabled.add(database)  # (its connected clients go on, as in PgBouncer)
        elif database not in proxy.disabled:
            return codec.error_response(OBJECT_NOT_IN_STATE, f"{database} is not disabled")
        else:
            proxy.disabled.discard(database)
        return complete(verb.upper())
    if verb == "set":
        return set_setting(proxy, sql)
    if verb == "shutdown" and len(words) == 1:
        log.warning("admin console: SHUTDOWN by %s", session.identity.user)
        proxy.commands.put("term")  # graceful, as SIGTERM
        return complete("SHUTDOWN")
    return None


def set_setting(proxy, sql):
    """SET key = value: a reloadable setting changed in the running proxy (not in the file: a reload
    goes back to the file's value, as PgBouncer's SET and RELOAD do)."""
    text = sql.strip().rstrip(";")[3:].strip()
    key, eq, value = text.partition("=")
    if not eq:
        key, _, value = text.partition(" to ")
    key, value = key.strip().lower(), value.strip()
    if not key or not value:
        return codec.error_response(SYNTAX_ERROR, "SET needs key = value (e.g. SET default_pool_size = 30, or "
                                                  "SET pool.max_size = 30)")
    path = PGBOUNCER_NAMES.get(key, key)
    try:
        setting, parsed = runtime_value(path, value)
    except ConfigError as e:
        return codec.error_response(SYNTAX_ERROR if "unknown" in str(e) else OBJECT_NOT_IN_STATE, str(e))
    new = copy.deepcopy(proxy.config)
    setattr(getattr(new, setting.section), setting.key, parsed)
    proxy.apply_config(new, proxy.authenticator.users)
    log.warning("admin console: SET %s = %r", path, parsed)
    return complete("SET")
