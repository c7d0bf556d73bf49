"""The client port's sockets, shared by the proxy (proxy.py) and the arbiter of several workers
(workers.py): the listen address, and the Unix socket psql finds by port."""
import os

from gevent import socket

from ..errors import ConfigError


def parse_address(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def unix_listener(directory, port, mode):
    """A listening Unix socket DIR/.s.PGSQL.PORT (where psql -h DIR -p PORT looks). A socket file
    left by a process that is gone is replaced; one that answers means another server runs."""
    path = os.path.join(directory, f".s.PGSQL.{port}")
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale
        else:
            raise ConfigError(f"server.unix_socket_dir: {path} is in use by another server")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, int(mode, 8))
        listener.listen(1024)
    except OSError as e:
        listener.close()
        raise ConfigError(f"server.unix_socket_dir: cannot listen on {path}: {e.strerror or e}") from None
    return listener
