"""Client authentication done by the proxy: trust, reject, md5 and SCRAM-SHA-256 (the proxy as SCRAM
server) here; jwt and api_key (a token or key sent as the password) in helios_proxy/auth/, which
also picks the method for a login by the ordered [[auth.rules]].

Secrets come from the users file or, for users not in it, from `auth_query` run on the backend as
`auth_user` with the user name as a bind parameter: on connections of its own (no client ever
gets one), in `auth.auth_database` whatever database the client named, with `search_path` fixed
to pg_catalog. An unknown user is asked for SCRAM proof against a mock secret derived from a
key (`mock_key`), so its salt is as stable and its cost as low as a known user's (PostgreSQL's
mock authentication): neither tells who exists, nor does a restart or another worker.
"""
import hmac
import logging
import os
from struct import unpack_from

from .. import auth
from ..auth import api_keys, cert, jwt as jwt_method, ldap, oauth2
from ..backend import kdf
from ..backend.connection import ServerConnection
from ..backend.credentials import Credentials
from ..errors import (INVALID_AUTHORIZATION, AuthenticationFailed, BackendError, FatalError, ProtocolViolation,
                      ProxyError, malformed)
from ..protocol import codec, messages as m
from ..protocol.codec import read_cstr
from ..protocol.scram import (DEFAULT_ITERATIONS, MECHANISM, ScramSecret, ScramServer, hmac_sha256, md5_hash,
                              md5_response)

log = logging.getLogger(__name__)
AUTH_CONNECTIONS_KEPT = 2  # idle auth_query connections the authenticator keeps


def _host(client):
    """The client's host as PostgreSQL names it in authentication errors."""
    return "[local]" if client.identity.local else client.identity.peer[0]


def password_failed(user):
    return AuthenticationFailed(f'password authentication failed for user "{user}"')


def mock_key(configured, users, fallback):
    """The key mock SCRAM secrets derive from: auth.mock_secret, else the users_file's secrets
    (the same for every worker and after a restart, unknown to clients), else fallback."""
    if configured:
        material = configured.encode()
    elif users:
        material = "\n".join(f"{user}\t{secret}" for user, secret in sorted(users.items())).encode()
    else:
        return fallback
    return hmac_sha256(b"helios-proxy mock authentication", material)


class Authenticator:
    """Looks up a user's secret and runs the configured method against a client."""

    def __init__(self, config, users, pools, primary):
        self.config = config
        self.pools = pools          # PoolManager, for auth_query
        self.primary = primary      # callable -> node to run auth_query on
        self._auth_idle = []        # auth_query connections of its own, idle
        self._random_key = os.urandom(32)  # the mock key's last resort: no secret configured at all
        self.users = users          # {user: secret} from users_file (sets the mock key and
                                    # _plain_scram: user -> (password, ScramSecret) derived once)

    @property
    def users(self):
        return self._users

    @users.setter
    def users(self, users):  # (a reload sets them, with the config)
        self._users = users
        self._mock_key = mock_key(self.config.auth.mock_secret, users, self._random_key)
        self._plain_scram = {}  # (their salts derive from the key)

    def lookup(self, user, database=None):
        """Credentials for user; unknown secrets give Credentials with known == False. (database
        is not used: nothing before authentication depends on the database the client named.)"""
        if user in self.users:
            return Credentials.from_secret(user, self.users[user])
        auth_user = self.config.auth.auth_user
        if auth_user and user != auth_user:
            return Credentials.from_secret(user, self._auth_query(user))
        return Credentials(user)

    def _auth_query(self, user):
        cfg = self.config.auth
        conn = self._auth_connection()
        ok = False
        try:
            rows = conn.execute(cfg.auth_query, [user])
            ok = conn.tx_status == m.TX_IDLE and not conn.broken
        except BackendError as e:
            log.error("auth_query failed: %s", e.message)
            raise BackendError("authentication query failed", sqlstate="28000") from e
        finally:
            if ok and len(self._auth_idle) < AUTH_CONNECTIONS_KEPT:
                self._auth_idle.append(conn)
            else:
                conn.close()
        return rows[0][1] if rows and len(rows[0]) > 1 else None

    def _auth_connection(self):
        """An idle auth_query connection of the authenticator's own, or a new one."""
        node = self.primary()
        while self._auth_idle:
            conn = self._auth_idle.pop()
            if conn.node.name == node.name and conn.idle_and_clean():
                return conn
            conn.close()
        cfg = self.config.auth
        creds = Credentials.from_secret(cfg.auth_user, self.users.get(cfg.auth_user))
        try:
            return ServerConnection(node, cfg.auth_database, creds, self.config).connect(
                {"application_name": "helios-auth", "search_path": "pg_catalog"})
        except ProxyError as e:
            raise BackendError(f"auth_query could not connect as auth_user: {e.message}") from e

    def mock_secret(self, user):
        """A SCRAM secret for a user that does not exist: stable per user, costless, never matched."""
        key = self._mock_key
        return ScramSecret(DEFAULT_ITERATIONS, hmac_sha256(key, b"salt:" + user.encode())[:16],
                           hmac_sha256(key, b"stored:" + user.encode()), hmac_sha256(key, b"server:" + user.encode()))

    def authenticate(self, client, creds):
        """Run the method the rules give `client` (its user, database, peer, tls; send(bytes),
        read_password()); return the credentials the backend login uses."""
        rule_index, rule = auth.rule_for(self.config, client)
        method = rule.method
        if method == "trust":
            return creds
        if method == "reject":
            self._decided(client, method, rule_index, "rejected by the rule")
            raise FatalError(f'pg_hba.conf rejects connection for host "{_host(client)}", user "{creds.user}", '
                             f'database "{client.identity.database}", '
                             f'{"SSL encryption" if client.identity.tls else "no encryption"}',
                             sqlstate=INVALID_AUTHORIZATION)
        if method in auth.TOKEN_METHODS:
            return self._token(client, creds, method, rule_index, rule)
        if method == "cert":
            return self._cert(client, creds, rule_index)
        if creds.scram or (method == "scram-sha-256" and creds.password is not None):
            return self._scram(client, creds)
        if method == "scram-sha-256":  # an md5 secret, or none: fail like PostgreSQL, after the exchange
            self._scram(client, Credentials(creds.user, scram=self.mock_secret(creds.user)))
            raise password_failed(creds.user)
        return self._md5(client, creds)

    def _token(self, client, creds, method, rule_index, rule):
        """jwt, api_key: the token or key comes as a cleartext password (TLS or the Unix socket
        only, unless the rule allows plaintext); the backend login stays the proxy's own."""
        if not (client.identity.tls or client.identity.local or rule.allow_plaintext):
            self._decided(client, method, rule_index, "refused: no TLS")
            raise FatalError(f'the {method} method needs TLS (or the Unix socket): connection of user '
                             f'"{creds.user}" to database "{client.identity.database}" '
                             f'from host "{_host(client)}" has no '
                             f'encryption', sqlstate=INVALID_AUTHORIZATION,
                             hint="Connect with sslmode=require, or allow plaintext in that [[auth.rules]] entry "
                                  "(allow_plaintext = true) of the proxy's configuration.")
        client.send(codec.authentication(m.AUTH_CLEARTEXT))
        with malformed("password message"):
            secret = read_cstr(client.read_password(), 0)[0]
        try:
            if method == "jwt":
                client.identity.auth_claims = jwt_method.METHOD.check(self.config, creds.user, secret)
            elif method == "oauth2":
                oauth2.METHOD.check(self.config, creds.user, secret)
            elif method == "ldap":
                ldap.check(self.config, creds.user, secret)
            else:
                api_keys.METHOD.check(self.config, creds.user, client.identity.database, secret,
                                      client.identity.tenant.name if client.identity.tenant is not None else None)
        except auth.Refused as e:
            self._decided(client, method, rule_index, f"refused: {e}")
            raise password_failed(creds.user) from None
        except Exception as e:  # a method that fails (its service, its library) refuses, never crashes
            log.error("auth: the %s method failed for user %s: %s: %s", method, creds.user, type(e).__name__, e)
            raise password_failed(creds.user) from None
        self._decided(client, method, rule_index, "accepted")
        return creds

    def _cert(self, client, creds, rule_index):
        """A client certificate the TLS handshake verified, naming this user: no password asked."""
        if not client.identity.tls:
            self._decided(client, "cert", rule_index, "refused: no TLS")
            raise FatalError(f'the cert method needs TLS: connection of user "{creds.user}" to database '
                             f'"{client.identity.database}" from host "{_host(client)}" has no encryption',
                             sqlstate=INVALID_AUTHORIZATION, hint="Connect with sslmode=require and a client "
                                                                  "certificate (sslcert, sslkey).")
        try:
            found = cert.check(self.config, creds.user, client.sock)
        except auth.Refused as e:
            self._decided(client, "cert", rule_index, f"refused: {e}")
            raise FatalError(f'certificate authentication failed for user "{creds.user}"',
                             sqlstate=INVALID_AUTHORIZATION) from None
        self._decided(client, "cert", rule_index, f"accepted ({found[0]})")
        return creds

    @staticmethod
    def _decided(client, method, rule_index, outcome):
        """Every decision of the auth proxy's methods, in the log (never the secret)."""
        who = client.identity
        log.info("auth: user=%s database=%s address=%s method=%s rule=%s: %s", who.user, who.database,
                 "unix socket" if who.local else who.peer[0], method, rule_index, outcome)

    def _md5(self, client, creds):
        salt = os.urandom(4)
        client.send(codec.authentication(m.AUTH_MD5, salt))
        with malformed("password message"):
            answer = read_cstr(client.read_password(), 0)[0]
        stored = creds.md5
        if stored is None and creds.password is not None:
            stored = md5_hash(creds.password, creds.login or creds.user)
        if stored is None or not hmac.compare_digest(answer, md5_response(stored, salt)):
            raise password_failed(creds.user)
        return creds

    def _scram(self, client, creds):
        secret = creds.scram or self._secret_for_password(creds)
        server = ScramServer(secret)
        client.send(codec.authentication(m.AUTH_SASL, codec.cstr(MECHANISM) + b"\0"))
        body = client.read_password()
        with malformed("SASL initial response"):
            mechanism, pos = read_cstr(body, 0)
            if mechanism != MECHANISM:
                raise ProtocolViolation("client selected an invalid SASL authentication mechanism")
            length = unpack_from("!i", body, pos)[0]
        try:
            first = bytes(body[pos + 4:pos + 4 + length]).decode()
            client.send(codec.authentication(m.AUTH_SASL_CONTINUE, server.first(first).encode()))
            final = server.final(bytes(client.read_password()).decode())
        except PermissionError:
            raise password_failed(creds.user) from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ProtocolViolation(f"malformed SCRAM message: {e}") from None
        client.send(codec.authentication(m.AUTH_SASL_FINAL, final.encode()))
        if creds.password is None:  # SCRAM passthrough: log in to the backend with the client's key
            creds = Credentials(creds.user, scram=secret, client_key=server.client_key)
        return creds

    def _secret_for_password(self, creds):
        name = creds.login or creds.user  # (a tenant's own line: user.tenant)
        cached = self._plain_scram.get(name)
        if cached and cached[0] == creds.password:
            return cached[1]
        # The salt derives from the mock key too: as stable across restarts and workers as an
        # unknown user's (a fresh one per start would tell known users apart), new with the password.
        salt = hmac_sha256(self._mock_key, b"salt:" + creds.user.encode() + b"\0" + creds.password.encode())[:16]
        secret = ScramSecret.from_password(creds.password, salt, derive=lambda pw, salt, n: kdf.derive(
            pw, salt, n, self.config.auth.max_scram_iterations, "users_file"))
        self._plain_scram[name] = (creds.password, secret)
        return secret
