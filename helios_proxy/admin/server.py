"""Serve the admin app with gevent's WSGI server, in the proxy process, in its own greenlets."""
import logging

from gevent.pywsgi import WSGIServer

from ..errors import ConfigError
from .app import create_app

log = logging.getLogger(__name__)


class _Log:
    """pywsgi's access log, at debug level through logging."""

    def write(self, line):
        log.debug("%s", line.rstrip())


def start(proxy):
    cfg = proxy.config.admin
    host, _, port = cfg.listen.rpartition(":")
    server = WSGIServer((host.strip("[]"), int(port)), create_app(proxy), log=_Log(), error_log=_Log())
    try:
        server.start()
    except OSError as e:
        raise ConfigError(f"admin.listen: cannot listen on {cfg.listen}: {e.strerror or e}") from None
    log.info("admin API on http://%s", cfg.listen)
    return server
