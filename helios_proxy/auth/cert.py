"""The cert method: a TLS client certificate, verified against `[auth.cert] ca_file` during the
handshake (server/tls.py asks for it), whose subject CN or a subjectAltName (DNS name or email) is
the login user, or maps to it through `[auth.map]`. No password is asked."""
from .rules import Refused, check_identity


def names(cert):
    """The identities a verified certificate (ssl getpeercert()) carries: CN first, then SANs."""
    out = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    out += [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "email")]
    return out


def check(config, user, sock):
    cert = sock.getpeercert() if hasattr(sock, "getpeercert") else None
    if not cert:
        raise Refused("no client certificate")
    found = names(cert)
    check_identity(config, found, user, "certificate of")
    return found
