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
    """The login's steps, in order: who the client is (identify), its proof (authenticate), then
    the admin console's greeting, or a server connection for it (first_server) and the greeting
    (greet). The login is the one writer of the session's Identity."""
    user, settings, startup = identify(session, pkt)
    creds = authenticate(session, pkt.params["user"], user, settings, startup)
    session.logged_in()
    proxy = session.proxy
    if session.identity.database == proxy.config.admin.database:
        if user not in proxy.config.admin.users:
            raise FatalError(f'user "{user}" may not use the admin console (admin.users)',
                             sqlstate=INVALID_AUTHORIZATION)
        who = session.identity
        who.admin, who.backend_pid = True, who.id
        who.secret = proxy.cancels.register(session, who.id)
        session.send(codec.authentication(m.AUTH_OK) + admin_db.greeting(session))
        return
    session.send(codec.authentication(m.AUTH_OK))
    timer.cancel()  # authenticated; waiting for a server has its own timeout
    pool, server = first_server(session, creds)
    greet(session, pool, server, settings)


def place(session, database, user):
    """The database the client uses, where it lives and the pool mode it gets."""
    cfg, who = session.proxy.config, session.identity
    who.database = database
    who.home = cfg.database_nodes.get(database)  # a database with a server of its own
    who.mode = cfg.mode_for(database, user)
    who.pooled = who.mode != "session"


def identify(session, pkt):
    """Who the client is from its startup packet (and its TLS server name): (the user it logs in
    as, the settings it asked for, the startup parameters with its options)."""
    proxy, cfg, who = session.proxy, session.proxy.config, session.identity
    params = pkt.params
    user = params.get("user")
    if not user:
        raise FatalError("no PostgreSQL user name specified in startup packet", sqlstate=INVALID_AUTHORIZATION)
    database = params.get("database") or user
    options = parse_options(params.get("options", ""))
    startup = {**params, **options}
    if proxy.tenants is not None and database != cfg.admin.database and not proxy.tenants.after_login:
        # (the admin console has no tenant) the tenant, the user it logs in as, its database
        tenant, user, database = proxy.tenants.identify(user, database, startup,
                                                        sni=getattr(session.sock, "helios_sni", None))
        proxy.tenants.admit(tenant)
        who.tenant = tenant
        session.settings.force(tenant.forced())
    who.user = user
    if database in proxy.disabled:  # DISABLE db (admin console), until ENABLE db
        raise FatalError(f'database "{database}" is not currently accepting connections (DISABLE, admin console)',
                         sqlstate="55000")
    place(session, database, user)
    if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
        raise FatalError("replication connections are not supported by HeliosProxy",
                         sqlstate=FEATURE_NOT_SUPPORTED)
    if cfg.tls.client_mode == "require" and not who.tls and not who.local:  # (as PostgreSQL's)
        raise FatalError(f'no encryption: TLS is required for host "{who.peer[0]}", user "{user}", '
                         f'database "{who.database}" (tls.client_mode = require)',
                         sqlstate=INVALID_AUTHORIZATION)
    settings = {k: v for k, v in params.items() if k not in NOT_FORWARDED}
    settings.update(options)
    if pkt.minor > 0 or pkt.extensions:
        session.send(codec.negotiate_protocol_version(3 << 16, pkt.extensions))  # we speak 3.0
    return user, settings, startup


def authenticate(session, sent_user, user, settings, startup):
    """The client proves who it is (frontend/auth.py); a tenant known only from its token is
    identified after. Returns the credentials of its backend login (a tenant's own pools: its
    partition); settings gets the tenant's forced ones."""
    proxy, cfg, who = session.proxy, session.proxy.config, session.identity
    creds = proxy.authenticator.lookup(user)
    if who.tenant is not None:  # a users_file line of its own (user.tenant), tenancy.tenant_secrets
        secret = proxy.tenants.secret_of(proxy.authenticator, user, who.tenant, sent_user)
        if secret is not None:  # the client proves the tenant's secret; the backend login stays the user's own
            proxy.authenticator.authenticate(session, secret)
        else:  # (md5 salts with the name the client sent)
            creds = proxy.authenticator.authenticate(session, dataclasses.replace(creds, login=sent_user))
    else:
        creds = proxy.authenticator.authenticate(session, creds)
    if proxy.tenants is not None and who.database != cfg.admin.database and proxy.tenants.after_login:
        # (identify = jwt_claim: from its token)
        tenant, _, database = proxy.tenants.identify(user, who.database, startup, who.auth_claims)
        proxy.tenants.admit(tenant)
        who.tenant = tenant
        session.settings.force(tenant.forced())
        if database != who.database:  # (isolation = database)
            place(session, database, user)
    if session.settings.forced:
        settings.update(session.settings.forced)
    if who.tenant is not None and who.tenant.cfg.pool_size:  # pools of its own, of that size
        proxy.pools.partition_sizes[who.tenant.name] = who.tenant.cfg.pool_size
        creds = dataclasses.replace(creds, partition=who.tenant.name)
    return creds


def first_server(session, creds):
    """(its home pool, a server connection or None). A server connection proves the database and
    user, gives the ParameterStatus values the client sees, and (session pooling) is the client's
    for the whole session. During a failover, pooled-mode logins are greeted from a pool known
    before and their first transaction waits in the switchover buffer; other logins wait there now."""
    proxy, who = session.proxy, session.identity
    pool = session.slot.set_home(proxy.pools.get(who.home or proxy.known_primary(), who.database, creds))
    if who.pooled and pool.server_params is not None:
        try:  # pooled modes never wait at login once the pool is known (an open breaker: no server yet)
            if (who.home or proxy.router.primary() is not None) and proxy.router.breakers.allows(pool.node):
                return pool, pool.try_acquire()
        except (BackendError, OSError) as e:
            if not node_unreachable(e):
                raise
        return pool, None
    if proxy.paused:  # PAUSE (admin): a session-pooled login waits for RESUME
        proxy.wait_unpaused(who.database)
    # A known pool with none free: greet now from its parameters; the first query waits for a
    # server (as in PgBouncer), so a client beyond max_size can still log in.
    if pool.server_params is not None and (who.home or proxy.buffer.ready()) is not None:
        try:
            return pool, pool.try_acquire()
        except (BackendError, OSError) as e:
            if not node_unreachable(e):
                raise
    return session.slot.acquire_primary()


def greet(session, pool, server, settings):
    """The client's settings (what it wants beyond a fresh connection's defaults) on its server
    connection, its ParameterStatus values, its cancel key, ReadyForQuery; pooled modes give the
    server connection back."""
    proxy, who = session.proxy, session.identity
    params = dict(server.params if server is not None else pool.server_params)
    # Settings are what the client wants beyond a fresh connection's defaults (pool.server_params),
    # not beyond this connection's, which may carry the last client's settings.
    reported = {k.lower(): v for k, v in pool.server_params.items()}
    session.settings.set({k: v for k, v in settings.items() if reported.get(k.lower()) != v})
    if server is not None:
        session.slot.attach(pool, server)
        apply_settings(server, session.settings.values)
        if who.tenant is not None:  # helios.tenant() (tenancy/proof.py)
            proxy.tenants.establish(server, who.tenant)
        session.settings.applied()
        params = server.params
    else:  # what the server will report once the settings are applied at the first lease
        names = {k.lower(): k for k in params}
        params.update({names[k.lower()]: v for k, v in session.settings.values.items() if k.lower() in names})
    greeting = [codec.parameter_status(k, v) for k, v in params.items()]
    # Session pooling shows the real backend pid (pg_backend_pid(), NOTIFY agree); pooled modes
    # (and a session greeted before it had a server) a pid of the proxy's own.
    who.backend_pid = who.id if who.pooled or server is None else server.pid
    who.secret = proxy.cancels.register(session, who.backend_pid)
    greeting.append(codec.backend_key_data(who.backend_pid, who.secret))
    greeting.append(codec.ready_for_query(m.TX_IDLE))
    if who.pooled and server is not None:
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

