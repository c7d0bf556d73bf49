"""TLS contexts for the client side (the proxy as TLS server)."""
from gevent import ssl

from ..errors import ConfigError


def client_context(tls, client_ca_file=""):
    """An SSLContext for accepting clients, or None when tls.client_mode is disable. client_ca_file
    ([auth.cert] ca_file, for the cert method): clients are asked for a certificate, verified
    against it when they send one."""
    if tls.client_mode == "disable":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"tls.client_cert_file/tls.client_key_file: cannot load: {e}") from e
    if client_ca_file:
        try:
            ctx.load_verify_locations(client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"auth.cert.ca_file: cannot load: {e}") from e
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.sni_callback = remember_sni
    return ctx


def remember_sni(sock, server_name, _ctx):
    """The host name the client asked for (TLS SNI), kept on its socket: tenancy's identify = sni."""
    try:
        sock.helios_sni = server_name
    except AttributeError:  # (an object that takes no attributes: no name kept)
        pass
