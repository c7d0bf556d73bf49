"""The `helios-proxy` command: run, check-config, --version."""
import logging
import os
import sys

import click

from . import __version__
from .errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class PluginGroup(click.Group):
    """The command group; installed plugins may add commands (register_commands), loaded only when
    a command is not a built-in one, so that `run` monkey-patches before any plugin is imported."""

    _loaded = False

    def _load(self):
        if not self._loaded:
            self._loaded = True
            _plugin_commands()

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None:
            self._load()
            command = super().get_command(ctx, name)
        return command

    def list_commands(self, ctx):
        self._load()
        return super().list_commands(ctx)


@click.group(cls=PluginGroup)
@click.version_option(__version__, prog_name="helios-proxy")
def main():
    """HeliosProxy: a PostgreSQL proxy with pooling, read/write splitting and failover."""


@main.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="TOML configuration file.")
@click.option("--worker", type=int, default=None, hidden=True, help="Run as this worker (server.workers).")
@click.option("--admin-socket", type=click.Path(), default=None, hidden=True,
              help="A worker's private admin API socket.")
@click.option("--unix-fd", type=int, default=None, hidden=True,
              help="A worker's inherited descriptor of the arbiter's Unix socket (server.unix_socket_dir).")
def run(path, worker, admin_socket, unix_fd):
    """Run the proxy in the foreground until SIGTERM/SIGINT."""
    if worker is not None:  # stopped by the arbiter while still starting: nothing to clean up yet
        import signal
        signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    import gevent
    from gevent import monkey
    monkey.patch_all()
    # A greenlet made by gevent.spawn would otherwise keep the stack it was spawned from and its
    # spawner (gevent's debugging aids, nothing here reads them): ~6,000 instructions per spawn
    # (a batch's flush, a worker job, a client's session) and a few frames kept per client.
    gevent.config.track_greenlet_tree = False
    _raise_open_files_limit()
    from .config import load_file
    try:
        config = load_file(path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    tag = f"[worker {worker}] " if worker is not None else ""
    log_format = LOG_FORMAT.replace("%(name)s", tag + "%(name)s")
    logging.basicConfig(level=config.log.level.upper(), format=log_format, stream=sys.stderr)
    if config.log.file:
        from logging.handlers import WatchedFileHandler
        try:
            handler = WatchedFileHandler(config.log.file)
        except OSError as e:
            raise click.ClickException(f"log.file: {config.log.file!r}: {e.strerror or e}") from None
        handler.setFormatter(logging.Formatter(log_format))
        logging.getLogger().addHandler(handler)
    if worker is None and config.server.pid_file:
        _write_pid_file(config.server.pid_file)
    if worker is None and config.server.workers > 1:
        from .frontend.workers import Arbiter
        try:
            sys.exit(Arbiter(config, path).serve_forever())
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
    from .proxy import Proxy
    try:
        proxy = Proxy(config, (worker, config.server.workers) if worker is not None else (0, 1), admin_socket,
                      unix_fd)
        proxy.serve_forever()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot listen on {config.server.listen}: {e.strerror or e}") from None


def _write_pid_file(path):
    """Write our pid to path (removed at exit); refuse when it names another live process."""
    import atexit
    try:
        with open(path) as f:
            other = int(f.read().strip() or 0)
    except (OSError, ValueError):
        other = 0
    if other and other != os.getpid():
        try:
            os.kill(other, 0)  # (a stale file of a process that is gone is simply replaced)
            running = True
        except ProcessLookupError:
            running = False
        except PermissionError:
            running = True
        if running:
            raise click.ClickException(f"server.pid_file: {path!r} names process {other}, which is running")
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as e:
        raise click.ClickException(f"server.pid_file: {path!r}: {e.strerror or e}") from None

    def remove(pid=os.getpid()):
        try:
            with open(path) as f:
                if int(f.read().strip() or 0) == pid:
                    os.unlink(path)
        except (OSError, ValueError):
            pass
    atexit.register(remove)


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
    """Validate a configuration file (settings, users file, plugins and their tables) and print a
    summary; exit 1 naming every problem found."""
    from .config import load_file
    from .frontend.userlist import load_userlist
    from .plugins.manager import PluginManager
    try:
        config = load_file(path)
        load_userlist(config.auth.users_file)
        PluginManager(config).load(watch=False)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    nodes = ", ".join(f"{n.name} ({n.role}, {n.host}:{n.port})" for n in config.nodes)
    click.echo(f"{path}: OK: listen {config.server.listen}, pool mode {config.pool.mode}, "
               f"auth {config.auth.method}, nodes: {nodes}")


@main.command("plugins")
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="Configuration file ([plugins] settings, wasm_dir); default: none.")
def plugins_command(path):
    """List the plugins that would be loaded, where from, and their hooks."""
    from .config import load, load_file
    from .plugins.manager import PluginManager
    try:
        config = load_file(path) if path else load({"nodes": [{"name": "none", "role": "primary"}]})
        manager = PluginManager(config).load(watch=False)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    listing = manager.listing()
    if not listing:
        click.echo("no plugins (pip install one that has a helios_proxy entry point, or set plugins.wasm_dir)")
    for name, source, hooks in listing:
        click.echo(f"{name}: {source}" + (f"; hooks: {', '.join(hooks)}" if hooks else ""))


def _plugin_commands():
    """Let installed plugins add commands (register_commands hook); a broken plugin is skipped."""
    try:
        from .config import load
        from .plugins.manager import PluginManager
        manager = PluginManager(load({"nodes": [{"name": "none", "role": "primary"}]})).load(wasm=False)
        manager.notify("register_commands", cli=main)
    except Exception as e:  # the CLI must work whatever a plugin does
        click.echo(f"warning: plugins could not add commands: {e}", err=True)


# --- talking to a running proxy through its admin API ----------------------------------------------
def _admin_call(path, method, config_path, body=None):
    """JSON from the admin API of the proxy that config_path configures; exits 1 on an error."""
    import json
    import urllib.error
    import urllib.request
    from .config import load_file
    try:
        config = load_file(config_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    url = f"http://{config.admin.listen}{path}"
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if config.admin.token:
        headers["Authorization"] = f"Bearer {config.admin.token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        try:
            message = json.load(e).get("error")
        except ValueError:
            message = e.reason
        raise click.ClickException(f"{method} {path}: {e.code} {message}") from None
    except OSError as e:
        raise click.ClickException(f"cannot reach the admin API at {url}: {e}") from None


def _echo_json(data):
    import json
    click.echo(json.dumps(data, indent=2))


config_option = click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
                             help="The running proxy's TOML configuration file (admin.listen, admin.token).")


@main.command()
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), default="viewer", show_default=True)
def token(name, role):
    """Make a named admin API token: prints the token (give it to its user) and the admin.tokens
    entry (its SHA-256; put it in the config)."""
    import re
    from .admin.tokens import new_entry
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise click.BadParameter("letters, digits, '_', '.', '-' only", param_hint="NAME")
    secret, entry = new_entry(name, role)
    click.echo(f"token:  {secret}")
    click.echo(f'config: [admin] tokens = ["{entry}"]')


@main.group()
def apikey():
    """API keys for the api_key authentication method ([auth.api_keys] file)."""


def _key_store(path):
    """Where the config keeps its API keys: etcd in a fleet ([fleet] dcs_url), else the file."""
    from .auth import api_keys
    from .config import load_file
    try:
        cfg = load_file(path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if not cfg.auth.api_keys.file and not cfg.fleet.dcs_url:
        raise click.ClickException(f"{path}: auth.api_keys.file is not set (nor fleet.dcs_url)")
    return api_keys.store(cfg)


def _keys_call(fn, *args):
    try:
        return fn(*args)
    except OSError as e:  # (etcd unreachable, or the file)
        raise click.ClickException(f"the API keys cannot be reached: {e}") from None


@apikey.command("create")
@click.argument("user")
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("--days", type=click.IntRange(min=1), default=None, help="Expires after this many days.")
@click.option("--database", "databases", multiple=True, help="Only this database (repeat for more).")
@click.option("--tenant", default=None, help="Only this tenant ([tenancy]): the key opens no other.")
def apikey_create(user, path, days, databases, tenant):
    """Make a key for USER: printed once (alone on the last line), only its hash is stored."""
    from .auth import api_keys
    key, key_id = _keys_call(api_keys.create, _key_store(path), user, days, databases, tenant)
    click.echo(f"key {key_id} for user {user}" + (f", expires in {days} days" if days else "")
               + (f", databases {', '.join(databases)}" if databases else "") + (f", tenant {tenant}" if tenant else ""))
    click.echo(key)


@apikey.command("list")
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False), help="TOML configuration file.")
def apikey_list(path):
    """The keys: id, user, created, expires, databases (never a secret)."""
    import time

    def when(t):
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "never"
    for key_id, entry in sorted(_keys_call(_key_store(path).load).items()):
        click.echo(f"{key_id}  user={entry['user']}  created={when(entry['created'])}  "
                   f"expires={when(entry.get('expires'))}  databases={','.join(entry.get('databases') or ['all'])}"
                   + (f"  tenant={entry['tenant']}" if entry.get("tenant") else ""))


@apikey.command("revoke")
@click.argument("key_id")
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False), help="TOML configuration file.")
def apikey_revoke(key_id, path):
    """Revoke the key KEY_ID: logins with it are refused from now on."""
    from .auth import api_keys
    if not _keys_call(api_keys.revoke, _key_store(path), key_id):
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"key {key_id} revoked")


@main.group()
def tenancy():
    """Multi-tenancy: what PostgreSQL needs to verify a session's tenant (docs/tenancy.md)."""


@tenancy.command("install")
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("--user", default="postgres", show_default=True,
              help="Connect to the primary as this role (it must be able to create a schema).")
@click.option("--database", "databases", multiple=True,
              help="Only this database (repeat for more); default: every database that takes connections.")
def tenancy_install(path, user, databases):
    """Install helios.tenant() (the session's verified tenant) and its key in each database tenants use.
    The password, if one is needed, comes from PGPASSWORD or ~/.pgpass."""
    import psycopg2
    from .config import load_file
    from .tenancy.install import install
    from .tenancy.proof import default_key_file
    try:
        cfg = load_file(path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    key_path = default_key_file(cfg)
    if not key_path:
        raise click.ClickException("tenancy.key_file is not set")
    try:
        install(cfg, key_path, user, os.environ.get("PGPASSWORD"), databases, echo=click.echo)
    except (psycopg2.Error, OSError, ValueError) as e:
        raise click.ClickException(f"tenancy install failed: {str(e).strip()}") from None
    click.echo("reload the proxies (SIGHUP) if they ran before the key file was made")


@main.command()
@click.argument("target")
@config_option
def switchover(target, path):
    """Planned switchover of the primary role to standby TARGET (no errors between transactions)."""
    _echo_json(_admin_call("/switchover", "POST", path, {"target": target}))


@main.command()
@click.argument("target", required=False)
@config_option
def failover(target, path):
    """Fence the primary and promote TARGET (default: the best standby) now."""
    _echo_json(_admin_call("/failover", "POST", path, {"target": target} if target else {}))


@main.command()
@config_option
def nodes(path):
    """Show every node: role, health, lag, fencing."""
    _echo_json(_admin_call("/nodes", "GET", path))


@main.command()
@click.argument("action", type=click.Choice(["show", "set", "confirm", "clear"]))
@click.argument("node", required=False)
@config_option
def primary(action, node, path):
    """Show or set the primary (standalone topology, or to settle a split brain)."""
    if action == "show":
        _echo_json(_admin_call("/topology", "GET", path))
    elif action == "set":
        if not node:
            raise click.UsageError("primary set needs a NODE")
        _echo_json(_admin_call("/primary", "POST", path, {"node": node}))
    else:
        _echo_json(_admin_call(f"/primary/{action}", "POST", path, {}))


if __name__ == "__main__":
    main()


if __name__ == "__main__":
    main()
