"""The `helios-proxy` command: run, check-config, --version."""
import logging
import sys

import click

from . import __version__
from .errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@click.group()
@click.version_option(__version__, prog_name="helios-proxy")
def main():
    """HeliosProxy: a PostgreSQL proxy with pooling, read/write splitting and failover."""


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="TOML configuration file.")
def run(path):
    """Run the proxy in the foreground until SIGTERM/SIGINT."""
    from gevent import monkey
    monkey.patch_all()
    _raise_open_files_limit()
    from .config import load_file
    try:
        config = load_file(path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    logging.basicConfig(level=config.log.level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    from .server.listener import Proxy
    try:
        proxy = Proxy(config)
        proxy.serve_forever()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot listen on {config.server.listen}: {e.strerror or e}") from None


def _raise_open_files_limit():
    """Every client and server connection is a file descriptor: allow as many as the system lets us."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@main.command("check-config")
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="TOML configuration file.")
def check_config(path):
    """Validate a configuration file and print a summary; exit 1 on the first error."""
    from .config import load_file
    from .server.userlist import load_userlist
    try:
        config = load_file(path)
        load_userlist(config.auth.users_file)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    nodes = ", ".join(f"{n.name} ({n.role}, {n.host}:{n.port})" for n in config.nodes)
    click.echo(f"{path}: OK: listen {config.server.listen}, pool mode {config.pool.mode}, "
               f"auth {config.auth.method}, nodes: {nodes}")


if __name__ == "__main__":
    main()
