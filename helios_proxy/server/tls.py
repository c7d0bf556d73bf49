"""TLS contexts for the client side (the proxy as TLS server)."""
from gevent import ssl

from ..errors import ConfigError


def client_context(tls):
    """An SSLContext for accepting clients, or None when tls.client_mode is disable."""
    if tls.client_mode == "disable":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"tls.client_cert_file/tls.client_key_file: cannot load: {e}") from e
    return ctx
