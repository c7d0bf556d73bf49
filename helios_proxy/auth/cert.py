"""The cert method: a TLS client certificate, verified against `[auth.cert] ca_file` during the
handshake (frontend/tls.py asks for it), whose subject CN is the login user, or maps to it through
`[auth.map]`, as PostgreSQL's `cert` method checks it. No password is asked.

A subject with more than one CN is refused (which one would be the user is the attacker's choice).
subjectAltNames (DNS names, emails) count only with `[auth.cert] use_san = true`: a CA that signs
SANs for its customers' host names would otherwise sign logins too."""
from .rules import Refused, check_identity


def names(cert, use_san=False):
    """The identities a verified certificate (ssl getpeercert()) carries: its one CN, then (use_san)
    its DNS and email SANs. Refused when the subject has several CNs or none to use."""
    cns = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    if len(cns) > 1:
        raise Refused(f"the certificate's subject has {len(cns)} CNs")
    out = list(cns)
    if use_san:
        out += [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "email")]
    return out


def check(config, user, sock):
    cert = sock.getpeercert() if hasattr(sock, "getpeercert") else None
    if not cert:
        raise Refused("no client certificate")
    found = names(cert, config.auth.cert.use_san)
    if not found:
        raise Refused("the certificate names no user (no CN)")
    check_identity(config, found, user, "certificate of")
    return found
