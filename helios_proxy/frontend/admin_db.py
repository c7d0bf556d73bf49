"""The virtual admin database (`admin.database`, default "helios") on the proxy port, for psql users
coming from PgBouncer: SHOW POOLS | CLIENTS | SERVERS | STATS | NODES | DATABASES | CONFIG | VERSION |
HELP (and LISTS, USERS, MEM, FDS, SOCKETS, TOTALS, STATE, KILL_CLIENT, DISABLE/ENABLE, SET, SHUTDOWN:
admin_console.py), RELOAD, KILL db, PAUSE [db], RESUME [db], SUSPEND / RESUME, RECONNECT [db], WAIT_CLOSE [db].
Only users in `admin.users`, authenticated as usual, get in. The rows are the admin API's
(admin/views.py)."""
import logging

from gevent.event import Event

from ..admin import views
from . import admin_console as console
from ..errors import PROTOCOL_VIOLATION
from ..protocol import codec, messages as m
from ..protocol.framing import MessageBuffer
from ..sockets import peek

log = logging.getLogger(__name__)
SYNTAX_ERROR, FEATURE_NOT_SUPPORTED, OBJECT_NOT_IN_STATE = "42601", "0A000", "55000"
GREETING = {"server_version": "15.0 (HeliosProxy admin)", "server_encoding": "UTF8", "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY", "integer_datetimes": "on", "standard_conforming_strings": "on",
            "TimeZone": "UTC", "IntervalStyle": "postgres", "is_superuser": "off"}
SHOW = {"pools": views.pools, "clients": views.clients, "servers": views.servers, "stats": views.stats,
        "nodes": views.nodes, "databases": views.databases, "config": views.config,
        "lists": console.lists, "users": console.users, "mem": console.mem, "fds": console.fds,
        "sockets": console.sockets, "totals": console.totals, "state": console.state}
HELP = ("SHOW POOLS | CLIENTS | SERVERS | STATS | NODES | DATABASES | CONFIG | LISTS | USERS | MEM | FDS | "
        "SOCKETS | TOTALS | STATE | VERSION | HELP; RELOAD; PAUSE [db]; RESUME [db]; SUSPEND; RESUME; "
        "RECONNECT [db]; WAIT_CLOSE [db]; KILL db; KILL_CLIENT id; DISABLE db; ENABLE db; SET key = value; SHUTDOWN")


def greeting(session):
    out = [codec.parameter_status(k, v) for k, v in GREETING.items()]
    out.append(codec.backend_key_data(session.identity.id, session.identity.secret))
    out.append(codec.ready_for_query(m.TX_IDLE))
    return b"".join(out)


def serve(session):
    """Answer the admin console until the client leaves."""
    buf, skipping = MessageBuffer(session.proxy.config.server.max_message_size), False
    while True:
        data = session.sock.recv(65536)
        if not data:
            return
        buf.feed(data)
        while True:
            msg = buf.next_message()
            if msg is None:
                break
            mtype, body = msg
            if mtype == m.TERMINATE:
                return
            if mtype == m.QUERY:
                session.send(answer(session, codec.read_cstr(body, 0)[0]) + codec.ready_for_query(m.TX_IDLE))
            elif mtype == m.SYNC:
                skipping = False
                session.send(codec.ready_for_query(m.TX_IDLE))
            elif mtype in (m.PARSE, m.BIND, m.DESCRIBE, m.EXECUTE, m.CLOSE, m.FLUSH):
                if not skipping:
                    skipping = True
                    session.send(codec.error_response(FEATURE_NOT_SUPPORTED,
                                                      "the admin console takes simple queries only"))
            else:
                session.send(codec.error_response(PROTOCOL_VIOLATION, f"unexpected message {mtype!r}"))


def client_gone(session):
    try:
        return peek(session.sock) == b""
    except (OSError, AttributeError):  # (a TLS socket: its end shows at the next read)
        return False


def answer(session, sql):
    """The reply to one simple query (without ReadyForQuery)."""
    proxy = session.proxy
    words = sql.strip().rstrip(";").split()
    if not words:
        return codec.message(m.EMPTY_QUERY_RESPONSE)
    verb, rest = words[0].lower(), [w.lower() for w in words[1:]]
    log.info("admin console: %s ran %r", session.identity.user, sql.strip())
    if verb == "show" and len(rest) == 1:
        what = rest[0]
        if what == "version":
            return codec.table_result(["version"], [[views.version()["version"]]], "SHOW")
        if what == "help":
            return codec.table_result(["commands"], [[HELP]], "SHOW")
        if SHOW.get(what):
            rows = SHOW[what](proxy)
            columns = list(rows[0]) if rows else ["(none)"]
            return codec.table_result(columns, [list(r.values()) for r in rows], "SHOW")
    if verb == "reload" and not rest:
        result = proxy.reload()
        if not result["reloaded"]:
            return codec.error_response(OBJECT_NOT_IN_STATE, f"reload failed: {result['error']}")
        return codec.message(m.COMMAND_COMPLETE, codec.cstr("RELOAD"))
    if verb == "suspend" and not rest:
        busy = proxy.suspend()
        notice = codec.notice_response("01000", f"{busy} session(s) still await an answer") if busy else b""
        return notice + codec.message(m.COMMAND_COMPLETE, codec.cstr("SUSPEND"))
    if verb == "resume" and not rest and proxy.resume_suspended():
        proxy.resume(None)  # (a PAUSE of all ends too, as in PgBouncer)
        return codec.message(m.COMMAND_COMPLETE, codec.cstr("RESUME"))
    if verb in ("reconnect", "wait_close") and len(words) <= 2:
        database = words[1] if len(words) == 2 else None
        if verb == "reconnect":
            busy = proxy.reconnect(database)
            notice = codec.notice_response("00000", f"{busy} server connection(s) close when released") if busy else b""
            return notice + codec.message(m.COMMAND_COMPLETE, codec.cstr("RECONNECT"))
        if not proxy.wait_close(database, gone=lambda: client_gone(session)):
            return b""
        return codec.message(m.COMMAND_COMPLETE, codec.cstr("WAIT_CLOSE"))
    if verb in ("pause", "resume") and len(words) <= 2:
        database = words[1] if len(words) == 2 else None
        if verb == "pause":
            busy = proxy.pause(database)
            notice = b""
            if busy:
                notice = codec.notice_response("01000", f"{busy} session(s) still hold a server connection")
            return notice + codec.message(m.COMMAND_COMPLETE, codec.cstr("PAUSE"))
        if not proxy.resume(database):
            return codec.error_response(OBJECT_NOT_IN_STATE, f"{database or 'all'} is not paused")
        return codec.message(m.COMMAND_COMPLETE, codec.cstr("RESUME"))
    done = console.command(session, verb, words, sql)  # KILL_CLIENT, DISABLE, ENABLE, SET, SHUTDOWN
    if done is not None:
        return done
    if verb == "kill" and len(words) == 2:  # PgBouncer's KILL db: its clients and server connections go now,
        database = words[1]                 # and the database stays paused until RESUME, as there
        proxy.paused.setdefault(database, Event()).clear()
        ended = [s for s in list(proxy.sessions) if s.identity.database == database and not s.identity.admin]
        for victim in ended:
            victim.terminate(f"terminating connection: KILL {database} (admin console)")
        for pool in list(proxy.pools.pools.values()):
            if pool.database == database:
                pool.close_idle()
        notice = codec.notice_response("00000", f"{len(ended)} client(s) of {database} ended; {database} stays "
                                                f"paused until RESUME {database}")
        return notice + codec.message(m.COMMAND_COMPLETE, codec.cstr("KILL"))
    return codec.error_response(SYNTAX_ERROR, f"unknown admin command: {sql.strip()[:100]!r}", hint=HELP)
