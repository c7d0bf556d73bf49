"""Every hook a plugin may implement, in one place. Implement them with `@hookimpl` on a module or
an instance named by an entry point in the `helios_proxy` group (see plugins/README.md).

A plugin may also define `configure(settings: dict)`: it is called once with its `[plugins.NAME]`
table (minus the keys the manager uses: enabled, policy, budget_ms).
"""
from typing import Optional

import pluggy

hookspec = pluggy.HookspecMarker("helios_proxy")
hookimpl = pluggy.HookimplMarker("helios_proxy")


@hookspec
def on_startup(proxy) -> None:
    """The proxy is about to accept clients."""


@hookspec
def on_shutdown(proxy) -> None:
    """The proxy is stopping (after the last client left or was closed)."""


@hookspec
def on_client_connect(session) -> None:
    """A client logged in: session is a read-only SessionInfo (plugins/view.py: id, user, database,
    peer, tls, local, mode, tenant, application_name, backend_pid, in_transaction)."""


@hookspec
def on_client_disconnect(session, reason: str) -> None:
    """A client's connection ended, with the reason."""


@hookspec
def on_query_start(ctx) -> Optional[object]:
    """A query on its way, as a read-only QueryInfo (plugins/view.py: ctx.sql, ctx.protocol, ctx.session
    a SessionInfo, ctx.tags the dict a plugin may annotate): return None to go on, or
    actions.reject(sqlstate, message) / actions.rewrite(sql) / actions.respond(columns, rows); add
    annotations to ctx.tags."""


@hookspec
def on_query_complete(ctx, outcome) -> None:
    """A query's answer reached the client: outcome.seconds, outcome.command_tag, outcome.rows,
    outcome.error (SQLSTATE or None), outcome.node."""


@hookspec
def rewrite_rules() -> list:
    """Rewrite rules to add after the configuration's [[rewrite]] ones: a list of tables with the
    same keys (name, match, replace, fingerprint, schema_prefix, normalize, hint, database, user,
    apply, dry_run). Asked when the pipeline is built (start, reload, plugin changes)."""


@hookspec
def on_topology_change(event) -> None:
    """A topology event: PrimaryChanged, NodeLeft or HealthChanged (topology/events.py)."""


@hookspec
def register_admin_routes(app) -> None:
    """Add Flask routes or blueprints to the admin API app."""


@hookspec
def register_commands(cli) -> None:
    """Add click commands to the `helios-proxy` group."""
