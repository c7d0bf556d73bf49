"""The auth proxy: which method authenticates a login, and the methods that check something other
than a stored password.

- rules.py: ordered `[[auth.rules]]` (database, user, address -> method), first match wins, as in
  pg_hba.conf; no match: `[auth] method`.
- jwt.py: the client's password is a JSON Web Token (pyjwt).
- api_keys.py: the client's password is a key `helios-proxy apikey create` made; stored hashed.
- oauth2.py: the client's password is an access token, checked by RFC 7662 introspection.
- ldap.py: the client's password is checked by a bind to an LDAP directory.
- cert.py: a TLS client certificate names the user; no password.

trust, reject, md5 and scram-sha-256 stay in frontend/auth.py (the Authenticator), which asks this
package for the method and for the verdict on the token the client sent in clear (jwt, api_key,
oauth2, ldap) or on its certificate (cert). Whatever the method, the proxy logs in to PostgreSQL with its own credential for that
user (users_file, auth_query, or none with a trusting server), never with the client's token.
"""
from .rules import TOKEN_METHODS, Refused, rule_for  # noqa: F401
