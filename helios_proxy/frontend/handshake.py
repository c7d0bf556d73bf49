"""A client's startup phase: SSL/GSS negotiation, the startup packet, authentication, server login.

Ends with the client holding a server connection, having seen AuthenticationOk, the server's
ParameterStatus values, BackendKeyData and ReadyForQuery, exactly as PostgreSQL would send them.
"""
import dataclasses
import logging
import gevent
from gevent import ssl

from ..errors import (BackendError, FEATURE_NOT_SUPPORTED, node_unreachable, FatalError, INVALID_AUTHORIZATION,
                      ProtocolViolation, TooManyConnections)
from ..pool import session_state
from . import admin_db
from ..sockets import Writer, peek
from ..protocol import codec, messages as m
from ..protocol.startup import (CANCEL_REQUEST, GSSENC_REQUEST, SSL_REQUEST, parse_options, parse_startup,
                                startup_length)

log = logging.getLogger(__name__)
NOT_FORWARDED = frozenset(("user", "database", "options", "replication"))


class LoginTimeout(Exception):
    pass


def read_exact(sock, n):
    chunks, left = [], n
    while left:
        data = sock.recv(left)
        if not data:
            raise ConnectionResetError("client closed the connection during startup")
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def startup(session):
    """Negotiate encryption and read the StartupMessage; return it, or None after a CancelRequest."""
    proxy, tls_ctx = session.proxy, session.proxy.tls_context
    limit = proxy.config.server.max_startup_packet
    negotiated = False
    while True:
        header = read_exact(session.sock, 4)
        packet = header + read_exact(session.sock, startup_length(header, limit) - 4)
        pkt = parse_startup(packet)
        if pkt.kind == CANCEL_REQUEST:
            proxy.cancels.cancel(pkt.pid, pkt.secret, session.identity.peer)
            return None
        # Beyond max_client_conn: refused before a TLS handshake or an authentication spends anything
        # on it (an SSLRequest is answered N, so that libpq reads and shows the error that follows).
        full = len(proxy.sessions) > proxy.config.server.max_client_conn
        if full and pkt.kind not in (SSL_REQUEST, GSSENC_REQUEST):
            raise TooManyConnections(f"no more connections allowed (max_client_conn = "
                                     f"{proxy.config.server.max_client_conn})")
        if pkt.kind in (SSL_REQUEST, GSSENC_REQUEST):
            if negotiated and pkt.kind == SSL_REQUEST:
                raise ProtocolViolation("SSLRequest received twice")
            accept = pkt.kind == SSL_REQUEST and tls_ctx is not None and not session.identity.local and not full
            # CVE-2021-23214: bytes sent before our answer could be read were not protected by TLS
            # (and may be injected); never process them, whatever the answer.
            if peek(session.sock):  # more bytes than the packet read so far
                request = "SSL request" if pkt.kind == SSL_REQUEST else "GSSAPI encryption request"
                raise ProtocolViolation(f"received unencrypted data after {request}",
                                        detail="This could be either a client-software bug or evidence "
                                               "of an attempted man-in-the-middle attack.")
            session.sock.sendall(b"S" if accept else b"N")
            if accept:  # the handshake runs under the login timeout, and the TLS socket owns the
                # descriptor from the start: a client that stalls in it is closed when the time is up
                tls_sock = tls_ctx.wrap_socket(session.sock, server_side=True, do_handshake_on_connect=False)
                session.sock = tls_sock
                session.writer.silent = True  # (nothing can be said to it before the handshake is done)
                tls_sock.do_handshake()
                session.writer = Writer(tls_sock)
                session.identity.tls = True
            negotiated = negotiated or pkt.kind == SSL_REQUEST
            continue
        return pkt


def login(session, pkt, timer):
    """Check the startup packet, authenticate the client, attach a server, greet the client."""
    proxy, cfg = session.proxy, session.proxy.config
    params = pkt.params
    user = params.get("user")
    if not user:
        raise FatalError("no PostgreSQL user name specified in startup packet", sqlstate=INVALID_AUTHORIZATION)
    database = params.get("database") or user
    options = parse_options(params.get("options", ""))
    tenanted = proxy.tenants is not None and database != cfg.admin.database  # (the admin console: no tenant)
    if tenanted and not proxy.tenants.after_login:  # the tenant, the user it logs in as, its database
        tenant, user, database = proxy.tenants.identify(user, database, {**params, **options},
                                                        sni=getattr(session.sock, "helios_sni", None))
        proxy.tenants.admit(tenant)
        session.identity.tenant = tenant
        session.settings.force(tenant.forced())
    session.identity.user, session.identity.database = user, database
    if database in proxy.disabled:  # DISABLE db (admin console), until ENABLE db
        raise FatalError(f'database "{database}" is not currently accepting connections (DISABLE, admin console)',
                         sqlstate="55000")
    session.identity.home = cfg.database_nodes.get(session.identity.database)  # a database with a server of its own
    session.identity.mode = cfg.mode_for(session.identity.database, user)
    session.identity.pooled = session.identity.mode != "session"
    if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
        raise FatalError("replication connections are not supported by HeliosProxy",
                         sqlstate=FEATURE_NOT_SUPPORTED)
    if cfg.tls.client_mode == "require" and not session.identity.tls and not session.identity.local:  # (as PG's)
        raise FatalError(f'no encryption: TLS is required for host "{session.identity.peer[0]}", user "{user}", '
                         f'database "{session.identity.database}" (tls.client_mode = require)',
                         sqlstate=INVALID_AUTHORIZATION)
    settings = {k: v for k, v in params.items() if k not in NOT_FORWARDED}
    settings.update(options)
    if pkt.minor > 0 or pkt.extensions:
        session.send(codec.negotiate_protocol_version(3 << 16, pkt.extensions))  # we speak 3.0

    admin = session.identity.database == cfg.admin.database
    creds = proxy.authenticator.lookup(user)
    if session.identity.tenant is not None:  # a users_file line of its own (user.tenant), tenancy.tenant_secrets
        secret = proxy.tenants.secret_of(proxy.authenticator, user, session.identity.tenant, params["user"])
        if secret is not None:  # the client proves the tenant's secret; the backend login stays the user's own
            proxy.authenticator.authenticate(session, secret)
        else:  # (md5 salts with the name the client sent)
            creds = proxy.authenticator.authenticate(session, dataclasses.replace(creds, login=params["user"]))
    else:
        creds = proxy.authenticator.authenticate(session, creds)
    if tenanted and proxy.tenants.after_login:  # (identify = jwt_claim: from its token)
        tenant, _, database = proxy.tenants.identify(user, session.identity.database, {**params, **options},
                                                     session.identity.auth_claims)
        proxy.tenants.admit(tenant)
        session.identity.tenant = tenant
        session.settings.force(tenant.forced())
        if database != session.identity.database:  # (isolation = database)
            session.identity.database = database
            session.identity.home = cfg.database_nodes.get(database)
            session.identity.mode = cfg.mode_for(database, user)
            session.identity.pooled = session.identity.mode != "session"
    if session.settings.forced:
        settings.update(session.settings.forced)
    if session.identity.tenant is not None and session.identity.tenant.cfg.pool_size:  # pools of its own, of that size
        proxy.pools.partition_sizes[session.identity.tenant.name] = session.identity.tenant.cfg.pool_size
        creds = dataclasses.replace(creds, partition=session.identity.tenant.name)
    session.logged_in()
    if admin:
        if user not in cfg.admin.users:
            raise FatalError(f'user "{user}" may not use the admin console (admin.users)',
                             sqlstate=INVALID_AUTHORIZATION)
        session.identity.admin = True
        session.identity.backend_pid = session.identity.id
        session.identity.secret = proxy.cancels.register(session, session.identity.id)
        session.send(codec.authentication(m.AUTH_OK) + admin_db.greeting(session))
        return
    session.send(codec.authentication(m.AUTH_OK))
    timer.cancel()  # authenticated; waiting for a server has its own timeout

    # A server connection proves the database and user, gives the ParameterStatus values the
    # client sees, and (session pooling) is the client's for the whole session.
    # During a failover, pooled-mode logins are greeted from a pool known before and their first
    # transaction waits in the switchover buffer; other logins wait there now.
    who = session.identity
    pool = session.slot.set_home(proxy.pools.get(who.home or proxy.known_primary(), who.database, creds))
    server = None
    breakers = proxy.router.breakers
    if session.identity.pooled and pool.server_params is not None:
        try:  # pooled modes never wait at login once the pool is known (an open breaker: no server yet)
            if (session.identity.home or proxy.router.primary() is not None) and breakers.allows(pool.node):
                server = pool.try_acquire()
        except (BackendError, OSError) as e:
            if not node_unreachable(e):
                raise
    else:
        if proxy.paused:  # PAUSE (admin): a session-pooled login waits for RESUME
            proxy.wait_unpaused(session.identity.database)
        # A known pool with none free: greet now from its parameters; the first query waits for a
        # server (as in PgBouncer), so a client beyond max_size can still log in.
        deferred = pool.server_params is not None and (session.identity.home or proxy.buffer.ready()) is not None
        if deferred:
            try:
                server = pool.try_acquire()
            except (BackendError, OSError) as e:
                if not node_unreachable(e):
                    raise
                deferred = False
        if server is None and not deferred:
            pool, server = session.slot.acquire_primary()
    params = dict(server.params if server is not None else pool.server_params)
    # Settings are what the client wants beyond a fresh connection's defaults (pool.server_params),
    # not beyond this connection's, which may carry the last client's settings.
    reported = {k.lower(): v for k, v in pool.server_params.items()}
    session.settings.set({k: v for k, v in settings.items() if reported.get(k.lower()) != v})
    if server is not None:
        session.slot.attach(pool, server)
        apply_settings(server, session.settings.values)
        if session.identity.tenant is not None:  # helios.tenant() (tenancy/proof.py)
            proxy.tenants.establish(server, session.identity.tenant)
        session.settings.applied()
        params = server.params
    else:  # what the server will report once the settings are applied at the first lease
        names = {k.lower(): k for k in params}
        params.update({names[k.lower()]: v for k, v in session.settings.values.items() if k.lower() in names})
    greeting = [codec.parameter_status(k, v) for k, v in params.items()]
    # Session pooling shows the real backend pid (pg_backend_pid(), NOTIFY agree); pooled modes
    # (and a session greeted before it had a server) a pid of the proxy's own.
    session.identity.backend_pid = session.identity.id if session.identity.pooled or server is None else server.pid
    session.identity.secret = proxy.cancels.register(session, session.identity.backend_pid)
    greeting.append(codec.backend_key_data(session.identity.backend_pid, session.identity.secret))
    greeting.append(codec.ready_for_query(m.TX_IDLE))
    if session.identity.pooled and server is not None:
        session.slot.hand_back()
    session.send(b"".join(greeting))


def apply_settings(server, settings):
    """Apply a client's startup settings; a bad one is FATAL, as PostgreSQL reports it at login."""
    try:
        session_state.apply(server, settings)
    except BackendError as e:
        e.severity = "FATAL"
        e.fields["S"] = e.fields["V"] = "FATAL"
        raise


def run(session):
    """The whole startup phase under the login timeout; False if the connection ends here."""
    cfg = session.proxy.config.server
    timer = gevent.Timeout(cfg.client_login_timeout, LoginTimeout)
    timer.start()
    try:
        pkt = startup(session)
        if pkt is None:
            return False
        login(session, pkt, timer)
        return True
    except LoginTimeout:
        raise FatalError("canceling authentication due to timeout", sqlstate="08006") from None
    except ssl.SSLError as e:
        raise ConnectionResetError(f"TLS handshake failed: {e}") from e
    finally:
        timer.cancel()

