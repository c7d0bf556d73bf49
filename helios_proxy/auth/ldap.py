"""The ldap method: the client's password is checked by binding to an LDAP directory (ldap3), as
PostgreSQL's `ldap` method does:

- simple bind: `bind_dn` with `{user}` replaced (escaped as a DN value), e.g.
  `uid={user},ou=people,dc=example,dc=com`;
- search+bind: bind as `search_bind_dn`/`search_bind_password`, search `base_dn` with
  `search_filter` (`{user}` escaped as a filter value, default `(uid={user})`), then bind as the
  one entry found.

`ldaps://` URLs or `starttls = true` protect the password on the way; every network step has
`timeout_s`, and ldap3's sockets are gevent's: a slow directory holds up only its own client.
An empty password is refused before anything is sent (an LDAP "unauthenticated bind" succeeds).
"""
from .rules import Refused


def check(config, user, password):
    import ldap3
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.dn import escape_rdn
    cfg = config.auth.ldap
    if not password:
        raise Refused("empty password")
    server = ldap3.Server(cfg.url, connect_timeout=max(1, int(cfg.timeout_s + 0.999)), get_info=ldap3.NONE)
    try:
        if cfg.bind_dn:
            dn = cfg.bind_dn.replace("{user}", escape_rdn(user))
        else:
            finder = _bound(ldap3, server, cfg, cfg.search_bind_dn or None, cfg.search_bind_password or None)
            try:
                finder.search(cfg.base_dn, cfg.search_filter.replace("{user}", escape_filter_chars(user)),
                              search_scope=ldap3.SUBTREE, attributes=[], size_limit=2, time_limit=int(cfg.timeout_s) or 1)
                found = [e.entry_dn for e in finder.entries]
            finally:
                finder.unbind()
            if len(found) != 1:
                raise Refused(f"{len(found)} directory entries for the user")
            dn = found[0]
        conn = _bound(ldap3, server, cfg, dn, password)
        conn.unbind()
    except LDAPException as e:
        raise Refused(f"LDAP: {type(e).__name__}: {e}") from None
    return dn


def _bound(ldap3, server, cfg, dn, password):
    """A connection bound as dn (None: anonymously); raises Refused."""
    conn = ldap3.Connection(server, user=dn, password=password, receive_timeout=max(1, int(cfg.timeout_s + 0.999)),
                            raise_exceptions=False)  # (whole seconds: ldap3 packs them as a socket option)
    if cfg.starttls:
        conn.open()
        if not conn.start_tls():
            raise Refused("StartTLS failed")
    if not conn.bind():
        raise Refused(f"bind as {dn or 'anonymous'} refused: {conn.result.get('description')}")
    return conn
