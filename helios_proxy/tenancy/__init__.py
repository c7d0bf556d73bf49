"""Multi-tenancy (`[tenancy] enabled`, the spec's "tenant isolation, per-tenant pools, resource
quotas"): which tenant a connection belongs to, what it may see, how much it may take.

Identify (`[tenancy] identify`): `user_suffix` (Supavisor's `user.tenant`: the part after the last
`.` of the user name is the tenant, the rest the PostgreSQL user it logs in as), `database` (the
database name is the tenant), `sni` (the first label of the host name the client asked for in
TLS: acme.db.example.com -> acme), or `jwt_claim` (a claim, `tenant_claim`, of the JWT the client
logged in with: known after authentication). An unknown tenant is refused (28000 "unknown tenant").

Isolation, per `[[tenants]]` entry:
- `rls`: every transaction runs with `helios.tenant` set to the tenant's name (a session setting
  the proxy carries like the client's own, on every server connection the client leases), for
  row-level security policies using `current_setting('helios.tenant')`. The tenant stage
  refuses any attempt to change it (42501): SET/RESET of it, any set_config() call, startup
  options naming it.
- `schema`: `search_path` fixed to the tenant's schema (`schema`, default its name); changing
  search_path is refused the same way.
- `database`: the tenant's own database (`database`, default its name), whatever it asked for.
Quotas: `max_client_conn` (53300 beyond it, other tenants unaffected), `statement_timeout_ms`,
`qps` (a token bucket per tenant through the rate limiter, limits/; with `[fleet] redis_url` the
fleet's bucket on Redis, so that several proxies together admit the tenant's qps).

Tenants can be added, changed and removed at runtime (`POST/PUT/DELETE /tenants[/NAME]`): those
changes are kept in `tenancy.tenants_file` (default: next to the config file) and loaded again
at start and on reload, over the `[[tenants]]` of the configuration. In a fleet coordinated through
etcd (`[fleet] dcs_url`) they are kept there instead (`tenants/NAME`), so that a change made through
one member holds on every member as soon as its watch sees it (topology/fleet_dcs.py).
"""
import dataclasses
import json
import logging
import os
import re
from types import SimpleNamespace

from ..errors import INSUFFICIENT_PRIVILEGE, ConfigError, FatalError, INVALID_AUTHORIZATION, TOO_MANY_CONNECTIONS
from ..backend.credentials import Credentials
from ..limits import Limit
from .proof import Prover

log = logging.getLogger(__name__)
SETTING = "helios.tenant"
CHANGES_TENANT = re.compile(r"set_config|\bhelios\s*\.\s*tenant\b|\"helios\.tenant\"", re.I)
CHANGES_PATH = re.compile(r"set_config|\b(?:set|reset)\s+(?:session\s+|local\s+)?search_path\b", re.I)
WRITES_SETTING = re.compile(r"\b(?:set|reset|alter|do|execute|prepare|call)\b|set_config", re.I)


class Tenant:
    __slots__ = ("cfg", "name", "connections", "logins", "queries", "refused", "rejected", "errors", "bytes_in",
                 "bytes_out")

    def __init__(self, cfg):
        self.cfg, self.name = cfg, cfg.name
        self.connections = self.logins = self.queries = self.refused = self.rejected = self.errors = 0
        self.bytes_in = self.bytes_out = 0  # of its sessions that ended (view() adds the live ones)

    def answered_error(self):
        """A query of one of its sessions got an ErrorResponse (/tenants counts them)."""
        self.errors += 1

    def forced(self):
        """The session settings this tenant's sessions always have."""
        cfg, out = self.cfg, {}
        if cfg.isolation == "rls":
            out[SETTING] = self.name
        elif cfg.isolation == "schema":
            out["search_path"] = '"' + (cfg.schema or self.name).replace('"', '""') + '"'
        if cfg.statement_timeout_ms:
            out["statement_timeout"] = str(int(cfg.statement_timeout_ms))
        return out

    def refusal(self, sql):
        """Why this tenant may not run sql (it would change what isolates it), or None."""
        isolation = self.cfg.isolation
        if isolation == "rls" and CHANGES_TENANT.search(sql) and WRITES_SETTING.search(sql):
            return f"permission denied: tenant {self.name!r} may not change {SETTING}"
        if isolation == "schema" and CHANGES_PATH.search(sql):
            return f"permission denied: tenant {self.name!r} may not change search_path"
        return None

    def view(self, sessions=()):
        live = [s for s in sessions if s.identity.tenant is self]
        return {**{k: v for k, v in vars(self.cfg).items()}, "connections": self.connections, "logins": self.logins,
                "queries": self.queries, "errors": self.errors, "refused_logins": self.refused,
                "rejected_queries": self.rejected, "bytes_in": self.bytes_in + sum(s.counters.bytes_in for s in live),
                "bytes_out": self.bytes_out + sum(s.counters.bytes_out for s in live)}


class Tenants:
    def __init__(self, config, settings):
        self.settings = settings  # TENANT_SETTINGS, to check runtime changes like the config's
        self.by_name = {}
        self.prover = None  # helios.tenant()'s proofs (proof.py)
        self.buckets = {}   # tenant name -> (qps, its token bucket): take_qps
        self.redis = None   # the fleet's Redis ([fleet] redis_url): the buckets are the fleet's
        self.changes = None  # where runtime changes are kept: FileChanges, or the fleet's (fleet_dcs.py)
        self.configure(config)

    def configure(self, config):
        """The configuration's tenants, then the runtime changes kept in tenants_file (counters
        of tenants that stay are kept)."""
        self.config, self.cfg = config, config.tenancy
        if self.prover is None:
            self.prover = Prover(config)
        else:
            self.prover.configure(config)  # (a reload: the key file is read again)
        self.path = self.cfg.tenants_file or (config.source + ".tenants.json" if config.source else "")
        if self.changes is None or isinstance(self.changes, FileChanges):  # (a fleet's store stays)
            self.changes = FileChanges(self.path)
        wanted = {t.name: t for t in config.tenants}
        for name, table in self.changes.load().items():
            if table is None:
                wanted.pop(name, None)
            else:
                try:
                    wanted[name] = self.check(name, table)
                except ConfigError as e:
                    log.error("%s: tenant %r left out: %s", self.path, name, e)
        old, self.by_name = self.by_name, {}
        for name, cfg in wanted.items():
            tenant = old.get(name) or Tenant(cfg)
            tenant.cfg = cfg
            self.by_name[name] = tenant

    def check(self, name, table):
        from ..config.loader import table_of  # (the config's own validation, naming the key)
        cfg = table_of({**table, "name": name}, {s.key: s for s in self.settings}, f"tenants.{name}")
        if cfg.isolation not in ("rls", "schema", "database"):
            raise ConfigError(f"tenants.{name}.isolation: rls, schema or database")
        return cfg

    # --- identification and quotas at login --------------------------------------------------
    @property
    def after_login(self):
        """Whether the tenant is known only once the client authenticated (a JWT claim)."""
        return self.cfg.identify == "jwt_claim"

    def identify(self, user, database, options, claims=None, sni=None):
        """(tenant, user to log in as, database) of a login; FatalError when refused. claims: the
        JWT's, for identify = jwt_claim (after authentication); sni: the TLS host name asked for."""
        if self.cfg.identify == "database":
            name = database
        elif self.cfg.identify == "sni":
            name = sni.split(".", 1)[0] if sni else None
            if not name:
                raise FatalError("unknown tenant: no TLS server name (connect with TLS to <tenant>.<host>)",
                                 sqlstate=INVALID_AUTHORIZATION)
        elif self.cfg.identify == "jwt_claim":
            name = (claims or {}).get(self.cfg.tenant_claim)
            if not isinstance(name, str) or not name:
                raise FatalError(f'unknown tenant: no "{self.cfg.tenant_claim}" claim (a JWT login is needed)',
                                 sqlstate=INVALID_AUTHORIZATION)
        else:
            base, dot, name = user.rpartition(".")
            if not dot or not base or not name:
                raise FatalError(f'unknown tenant: the user name "{user}" names none (user.tenant)',
                                 sqlstate=INVALID_AUTHORIZATION)
            user = base
        tenant = self.by_name.get(name)
        if tenant is None:
            raise FatalError(f'unknown tenant "{name}"', sqlstate=INVALID_AUTHORIZATION)
        if any(k.lower() in (SETTING, "search_path") for k in options) and tenant.cfg.isolation != "database":
            tenant.refused += 1
            raise FatalError(f"permission denied: tenant {tenant.name!r} may not set {SETTING} or search_path "
                             "at login", sqlstate=INSUFFICIENT_PRIVILEGE)
        if tenant.cfg.isolation == "database":
            database = tenant.cfg.database or tenant.name
        return tenant, user, database

    def secret_of(self, authenticator, user, tenant, login_name):
        """The credentials a client of tenant proves at login: the users_file line `user.tenant` when
        there is one; None: the user's own (tenant_secrets = optional, **one password then opens
        every tenant of that user**). tenant_secrets = required and no such line: refused (28P01,
        after the exchange, as PostgreSQL refuses an unknown user)."""
        name = f"{user}.{tenant.name}"
        if name in authenticator.users:  # (under the name the client sent: md5 salts with it)
            return dataclasses.replace(authenticator.lookup(name), user=user, login=login_name)
        if self.cfg.tenant_secrets == "required":
            tenant.refused += 1
            return Credentials(login_name)  # (known == False: the method's exchange fails, nothing told)
        return None

    def admit(self, tenant):
        limit = tenant.cfg.max_client_conn
        if limit and tenant.connections >= limit:
            tenant.refused += 1
            raise FatalError(f'too many connections for tenant "{tenant.name}" (max_client_conn {limit})',
                             sqlstate=TOO_MANY_CONNECTIONS)
        tenant.connections += 1
        tenant.logins += 1

    def take_qps(self, tenant, count=1):
        """count executions of tenant against its qps (a token bucket); raises limits.Exceeded."""
        qps = tenant.cfg.qps
        known = self.buckets.get(tenant.name)
        if known is None or known[0] != qps:
            cfg = SimpleNamespace(name=f"tenant {tenant.name} qps", kind="token_bucket", key="tenant", match="",
                                  rate=qps, burst=max(1, int(qps)), on_exceed="reject", max_wait_ms=0)
            if self.config.fleet.redis_url:  # the fleet's bucket, on Redis (limits/fleet.py)
                from ..limits.fleet import Fleet, FleetLimit
                if self.redis is None:
                    self.redis = Fleet(self.config)
                limit = FleetLimit(cfg, self.redis)
            else:
                limit = Limit(cfg)
            known = self.buckets[tenant.name] = (qps, limit)
        known[1].take(tenant.name, count)

    def establish(self, server, tenant):
        """A server connection begins to serve tenant (a lease, a login, a move): its proof for
        helios.tenant() is set before anything of the client (proof.py); raises BackendError."""
        self.prover.establish(server, tenant)

    @staticmethod
    def left(tenant, session):
        tenant.connections -= 1
        tenant.bytes_in += session.counters.bytes_in
        tenant.bytes_out += session.counters.bytes_out

    # --- runtime changes (admin API) ------------------------------------------------------------
    def put(self, name, table):
        """Add or replace a tenant (kept in tenants_file); ConfigError names a bad key."""
        cfg = self.check(name, table)
        self.changes.save(name, {k: v for k, v in vars(cfg).items() if k != "name"})
        tenant = self.by_name.get(name) or Tenant(cfg)
        tenant.cfg = cfg
        self.by_name[name] = tenant
        return tenant

    def delete(self, name):
        """Remove a tenant: new logins are refused; its connected sessions go on until they end."""
        if name not in self.by_name:
            return False
        self.changes.save(name, None)
        self.by_name.pop(name, None)  # (a fleet's watch may have applied it already, while it was saved)
        return True

    def view(self, sessions=()):
        sessions = list(sessions)
        return [t.view(sessions) for t in self.by_name.values()]


class FileChanges:
    """Runtime changes to the tenants in a JSON file: {name: table, or null for a removed one}."""

    def __init__(self, path):
        self.path = path

    def load(self):
        if not self.path or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path) as f:
                saved = json.load(f)
            return saved if isinstance(saved, dict) else {}
        except (OSError, ValueError) as e:
            log.error("%s: cannot read the saved tenants: %s", self.path, e)
            return {}

    def save(self, name, table):
        if not self.path:
            raise ConfigError("no tenancy.tenants_file to keep the change in (and no config file to put it next to)")
        saved = self.load()
        saved[name] = table
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)
