"""`[[auth.rules]]`: the first rule whose database, user and address match a login decides its
method, as pg_hba.conf does; when none does, `[auth] method` (a rule of its own, `default`)."""
import ipaddress
from fnmatch import fnmatchcase
from types import SimpleNamespace

# Methods whose secret travels in clear (the client's password message): TLS or the Unix socket only,
# unless the rule says allow_plaintext.
TOKEN_METHODS = frozenset(("jwt", "api_key", "oauth2", "ldap"))


def _name_matches(pattern, name):
    return pattern == "all" or fnmatchcase(name, pattern)


def _address_matches(pattern, session):
    if pattern == "all":
        return True
    if session.identity.local:  # the Unix socket has no address: only "all" rules apply
        return False
    try:
        address = ipaddress.ip_address(session.identity.peer[0].split("%")[0])
        return address in ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return False


class Refused(Exception):
    """A method does not let this user in (the reason is logged, never told to the client)."""


def check_identity(config, names, user, what):
    """The identity a method verified (a token's claim, a certificate's names) must be the login
    user, or map to it through [auth.map] (pg_ident style); raises Refused."""
    if any(name == user or config.auth.map.get(name) == user for name in names):
        return
    raise Refused(f"{what} {', '.join(map(repr, names)) or 'nobody'} may not log in as this user")


def rule_for(config, session):
    """(index or "default", rule) deciding how session logs in."""
    for i, rule in enumerate(config.auth.rules):
        if (_name_matches(rule.database, session.identity.database) and _name_matches(rule.user, session.identity.user)
                and _address_matches(rule.address, session)):
            return i, rule
    return "default", SimpleNamespace(method=config.auth.method, allow_plaintext=False)
