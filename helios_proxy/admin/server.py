"""Serve the admin app with gevent's WSGI server, in the proxy process, in its own greenlets."""
import logging
import os

from gevent import socket
from gevent.pywsgi import WSGIServer

from ..errors import ConfigError
from .app import create_app

log = logging.getLogger(__name__)


class _Log:
    """pywsgi's access log, at debug level through logging."""

    def write(self, line):
        log.debug("%s", line.rstrip())


def start(proxy, unix_path=None):
    """Serve on admin.listen, or (a worker of several) on the Unix socket unix_path."""
    cfg = proxy.config.admin
    if unix_path is not None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(unix_path + ".new")
        listener.listen(128)
        os.rename(unix_path + ".new", unix_path)  # appears whole: the arbiter may connect at once
        server = WSGIServer(listener, create_app(proxy), log=_Log(), error_log=_Log())
        server.start()
        return server
    host, _, port = cfg.listen.rpartition(":")
    server = WSGIServer((host.strip("[]"), int(port)), create_app(proxy), log=_Log(), error_log=_Log())
    try:
        server.start()
    except OSError as e:
        raise ConfigError(f"admin.listen: cannot listen on {cfg.listen}: {e.strerror or e}") from None
    log.info("admin API on http://%s", cfg.listen)
    return server
