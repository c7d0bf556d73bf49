"""Render docs/configuration.md and etc/helios-proxy.toml from the schema:

    python -m helios_proxy.config.docs > docs/configuration.md
    python -m helios_proxy.config.docs example > etc/helios-proxy.toml
"""
import sys

from ..plugins.manager import GLOBAL_DOCS, TABLE_DOCS
from .schema import (AUTH_API_KEY_SETTINGS, AUTH_CERT_SETTINGS, AUTH_JWT_SETTINGS, AUTH_LDAP_SETTINGS,
                     AUTH_OAUTH2_SETTINGS,
                     AUTH_RULE_SETTINGS,
                     CACHE_RULE_SETTINGS,
                     DATABASE_SETTINGS, LIMIT_SETTINGS, NODE_SETTINGS, REWRITE_SETTINGS, ROUTING_TABLE_SETTINGS,
                     SETTINGS, TENANT_SETTINGS, USER_SETTINGS)

HEADER = """# Configuration reference

Generated from `helios_proxy/config/schema.py` by `python -m helios_proxy.config.docs`; do not edit
by hand (a test fails when this file is stale).

The file is TOML. Every setting may be overridden by the environment variable
`HELIOS_<SECTION>__<KEY>` (for example `HELIOS_POOL__MAX_SIZE=50`). Settings marked *reload* take
effect on SIGHUP; the others need a restart. Secret settings never appear in logs.
"""


def _fmt(value, none="(required)"):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return none if value is None else repr(value)


def _num(v):
    return int(v) if float(v).is_integer() else v


def _row(s, none="(required)"):
    notes = []
    if s.choices:
        notes.append("one of " + ", ".join(f"`{c}`" for c in s.choices))
    if s.min is not None:
        notes.append(f"min {_num(s.min)}")
    if s.max is not None:
        notes.append(f"max {_num(s.max)}")
    if s.reloadable:
        notes.append("*reload*")
    if s.secret:
        notes.append("*secret*")
    extra = f" ({'; '.join(notes)})" if notes else ""
    desc = s.description.replace("|", "\\|")
    return f"| `{s.key}` | {s.type.__name__} | `{_fmt(s.default, none)}` | {desc}{extra} |"


def render():
    out = [HEADER]
    sections = []
    for s in SETTINGS:
        if s.section not in sections:
            sections.append(s.section)
    for section in sections:
        out.append(f"\n## [{section}]\n\n| key | type | default | description |\n|---|---|---|---|")
        out.extend(_row(s) for s in SETTINGS if s.section == section)
    for section, doc, table in (("databases", "Overrides for one database; unset keys inherit [pool].",
                                 DATABASE_SETTINGS),
                                ("users", "Overrides for one user.", USER_SETTINGS)):
        out.append(f"\n## [{section}.NAME]\n\n{doc}\n\n| key | type | default | description |\n|---|---|---|---|")
        out.extend(_row(s, "(inherit)") for s in table)
    for title, doc, table in (
            ("[[auth.rules]]", "Ordered like pg_hba.conf: the first rule matching the login's database, user and "
             "address decides its method; none matches: [auth] method (docs/auth.md).", AUTH_RULE_SETTINGS),
            ("[auth.jwt]", "The jwt method: the client's password is a JSON Web Token.", AUTH_JWT_SETTINGS),
            ("[auth.oauth2]", "The oauth2 method: the client's password is an access token, checked by token "
             "introspection (RFC 7662).", AUTH_OAUTH2_SETTINGS),
            ("[auth.ldap]", "The ldap method: the client's password is checked by a bind to the directory.",
             AUTH_LDAP_SETTINGS),
            ("[auth.cert]", "The cert method: a TLS client certificate whose CN (or a SAN) is the user, or "
             "maps to it through [auth.map]; no password.", AUTH_CERT_SETTINGS),
            ("[auth.api_keys]", "The api_key method: the client's password is a key made by "
             "`helios-proxy apikey create`.", AUTH_API_KEY_SETTINGS),
            ("[[limits]]", "The rate limiter (docs/limits.md): one table per limit; a query must pass every "
             "limit whose key matches.", LIMIT_SETTINGS),
            ("[[routing.tables]]", "Schema routing (docs/routing.md): per table, the first matching rule decides; "
             "a read touching several tables takes the strictest.", ROUTING_TABLE_SETTINGS),
            ("[[tenants]]", "Multi-tenancy (docs/tenancy.md): one table per tenant, with [tenancy] enabled.",
             TENANT_SETTINGS),
            ("[[rewrite]]", "The query rewriter (docs/analytics.md): rules in order, each may replace by regular "
             "expression, prefix schemas, normalize or add a hint.", REWRITE_SETTINGS)):
        out.append(f"\n## {title}\n\n{doc}\n\n| key | type | default | description |\n|---|---|---|---|")
        out.extend(_row(s) for s in table)
    out.append("\n## [auth.map]\n\n`\"external name\" = \"user\"` entries (pg_ident style): a token whose "
               "user_claim is the external name may log in as that user.")
    out.append("\n## [[cache.rules]]\n\nPer-table cache rules; a query reading several tables gets the "
               "strictest of their rules.\n\n| key | type | default | description |\n|---|---|---|---|")
    out.extend(_row(s) for s in CACHE_RULE_SETTINGS)
    out.append("\n## [plugins]\n\nPlugins (see plugins/README.md). Any other key of a [plugins.NAME] table "
               "is the plugin's own setting, passed to its `configure(table)`; a table naming no plugin is an "
               "error.\n\n| key | default | description |\n|---|---|---|")
    out.extend(f"| `{k}` | `{d}` | {text} |" for k, d, text in GLOBAL_DOCS)
    out.append("\n## [plugins.NAME]\n\n| key | default | description |\n|---|---|---|")
    out.extend(f"| `{k}` | `{d}` | {text} |" for k, d, text in TABLE_DOCS)
    out.append("\n## [[nodes]]\n\nOne table per PostgreSQL server.\n\n"
               "| key | type | default | description |\n|---|---|---|---|")
    out.extend(_row(s) for s in NODE_SETTINGS)
    return "\n".join(out) + "\n"


def _toml(value):
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _fmt(value)


EXAMPLE_NODES = (("primary", 5432, "primary", 0), ("standby1", 5433, "standby", 1))


def render_example():
    out = ["# HeliosProxy: every setting with its default (see docs/configuration.md).",
           "# Copy, then change what you need; `helios-proxy check-config -c FILE` validates it.",
           "# Generated by `python -m helios_proxy.config.docs example`."]
    section = None
    for s in SETTINGS:
        if s.section != section:
            section = s.section
            out.append(f"\n[{section}]")
        out.append(f"# {s.description}")
        out.append(f"{s.key} = {_toml(s.default)}")
    out.append("\n# Per-database and per-user overrides, for example:\n# [databases.reporting]\n"
               "# mode = \"session\"\n# max_size = 5\n# [users.batch]\n# mode = \"session\"\n"
               "# max_connections = 2")
    out.append("\n# Rate limits (docs/limits.md), for example:\n# [[limits]]\n# name = \"per-user\"\n"
               "# kind = \"token_bucket\"\n# key = \"user\"\n# rate = 100.0\n# burst = 200")
    out.append("\n# Authentication rules, first match wins (docs/auth.md), for example:\n# [[auth.rules]]\n"
               "# user = \"svc_*\"\n# method = \"jwt\"\n# [auth.jwt]\n# public_key_file = \"/etc/helios/jwt.pem\"\n"
               "# issuer = \"https://id.example.com/\"")
    out.append("\n# Per-table cache rules, for example:\n# [[cache.rules]]\n# table = \"exchange_rates\"\n"
               "# ttl_s = 5\n# stable_functions = true")
    out.append("\n[plugins]")
    for key, default, text in GLOBAL_DOCS:
        out.append(f"# {text}\n{key} = {default}")
    out.append("# A plugin's own settings, for example:\n# [plugins.query_guard]\n# policy = \"fail-closed\"\n"
               "# statements = [\"DELETE\", \"UPDATE\"]")
    out.append("\n# One [[nodes]] table per PostgreSQL server.")
    for name, port, role, priority in EXAMPLE_NODES:
        out.append(f'\n[[nodes]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port}\nrole = "{role}"\n'
                   f"weight = 1\npriority = {priority}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_example() if sys.argv[1:] == ["example"] else render(), end="")
