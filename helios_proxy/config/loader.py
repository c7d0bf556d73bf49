"""Load TOML, apply HELIOS_<SECTION>__<KEY> environment overrides, validate against the schema."""
import difflib
import ipaddress
import os
import tomllib

from ..errors import ConfigError
from ..rewrite.rules import problems as rewrite_problems
from .schema import (AUTH_API_KEY_SETTINGS, AUTH_CERT_SETTINGS, AUTH_JWT_SETTINGS, AUTH_LDAP_SETTINGS,
                     AUTH_OAUTH2_SETTINGS,
                     AUTH_RULE_SETTINGS,
                     CACHE_RULE_SETTINGS,
                     DATABASE_SETTINGS, LIMIT_SETTINGS, NODE_SETTINGS, REWRITE_SETTINGS, ROUTING_TABLE_SETTINGS,
                     SETTINGS, TENANT_SETTINGS, USER_SETTINGS)

ENV_PREFIX = "HELIOS_"
SECTIONS = {}
for _s in SETTINGS:
    SECTIONS.setdefault(_s.section, {})[_s.key] = _s
NODE_KEYS = {s.key: s for s in NODE_SETTINGS}


class Table:
    """A configuration table, its keys as attributes (`config.pool.max_size`, `node.name`): what
    types.SimpleNamespace is, as a plain class, whose attribute loads CPython 3.11 specializes (a
    SimpleNamespace's go through the generic lookup: 2-3x slower, on every request's path)."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def __eq__(self, other):
        return isinstance(other, Table) and vars(self) == vars(other)

    __hash__ = None

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Config(Table):
    """Sections as attributes (`config.pool.max_size`), nodes as a list of namespaces."""

    source = None

    def pool_setting(self, database, key):
        """A [pool] setting as it applies to database ([databases.NAME] overrides)."""
        override = getattr(self.databases.get(database), key, None)
        return getattr(self.pool, key) if override is None else override

    def server_dbname(self, database):
        """The name database has on the server ([databases.NAME] dbname: an alias)."""
        return getattr(self.databases.get(database), "dbname", None) or database

    def user_setting(self, user, key):
        return getattr(self.users.get(user), key, None)

    def mode_for(self, database, user):
        """The pool mode of a client: [users.NAME] > [databases.NAME] > [pool]."""
        return self.user_setting(user, "mode") or self.pool_setting(database, "mode")

    @property
    def pooled_modes(self):
        """Whether any client may get transaction or statement pooling."""
        modes = {self.pool.mode} | {t.mode for t in (*self.databases.values(), *self.users.values())}
        return bool(modes - {"session", None})

    def redacted(self):
        """The configuration as plain data with secrets replaced, safe to log or serve."""
        out = {}
        for section, keys in SECTIONS.items():
            values = getattr(self, section)
            out[section] = {k: ("********" if s.secret and getattr(values, k) else getattr(values, k))
                            for k, s in keys.items()}
        out["nodes"] = [vars(n).copy() for n in self.nodes]
        out["databases"] = {k: vars(v).copy() for k, v in self.databases.items()}
        out["users"] = {k: vars(v).copy() for k, v in self.users.items()}
        out["limits"] = [vars(limit).copy() for limit in self.limits]
        out["rewrite"] = [vars(rule).copy() for rule in self.rewrite]
        out["tenants"] = [vars(t).copy() for t in self.tenants]
        out["cache"]["rules"] = [vars(r).copy() for r in self.cache.rules]
        out["routing"]["tables"] = [vars(r).copy() for r in self.routing.tables]
        out["auth"]["rules"] = [vars(r).copy() for r in self.auth.rules]
        out["auth"]["jwt"] = {k: ("********" if k == "secret" and v else v) for k, v in vars(self.auth.jwt).items()}
        out["auth"]["api_keys"] = vars(self.auth.api_keys).copy()
        out["auth"]["cert"] = vars(self.auth.cert).copy()
        out["auth"]["ldap"] = {k: ("********" if k == "search_bind_password" and v else v)
                               for k, v in vars(self.auth.ldap).items()}
        out["auth"]["oauth2"] = {k: ("********" if k == "client_secret" and v else v)
                                 for k, v in vars(self.auth.oauth2).items()}
        out["auth"]["map"] = dict(self.auth.map)
        return out


def runtime_value(path, text):
    """(setting, value) for `SET path = text` at run time (the admin console): a reloadable setting
    of a section, its value parsed as TOML parses one and checked as the loader checks it."""
    by_path = {s.path: s for s in SETTINGS}
    setting = by_path.get(path)
    if setting is None:
        raise ConfigError(f"{path}: unknown setting{did_you_mean(path, by_path)}")
    if not setting.reloadable:
        raise ConfigError(f"{path}: needs a restart to change (not reloadable)")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip().strip("'")  # (a bare word: a string, as PgBouncer's SET takes it)
    return setting, _coerce(setting, value, path)


def _coerce(setting, value, path):
    kind = setting.type
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: expected a list of strings, got {value!r}")
        return value
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{path}: expected {kind.__name__}, got {value!r}")
    if setting.choices and value not in setting.choices:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(setting.choices)}")
    if setting.min is not None and value < setting.min:
        raise ConfigError(f"{path}: {value!r} is below the minimum {setting.min}")
    if setting.max is not None and value > setting.max:
        raise ConfigError(f"{path}: {value!r} is above the maximum {setting.max}")
    if setting.validate:
        problem = setting.validate(value)
        if problem:
            raise ConfigError(f"{path}: {value!r}: {problem}")
    return value


def _from_env(setting, text, var):
    """Parse an environment override by the setting's type."""
    try:
        if setting.type is list:
            return [v.strip() for v in text.split(",") if v.strip()]
        if setting.type is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes", "on")
        return setting.type(text)
    except ValueError:
        raise ConfigError(f"{var} (for {setting.path}): expected {setting.type.__name__}, got {text!r}") from None


class Problems(list):
    """Every configuration error found, so that one run of check-config reports them all."""

    def check(self, fn, *args, default=None):
        """fn(*args), or default after noting the ConfigError it raised."""
        try:
            return fn(*args)
        except ConfigError as e:
            self.extend(str(e).splitlines())
            return default

    def raise_any(self):
        if self:
            raise ConfigError("\n".join(self) if len(self) == 1 else
                              f"{len(self)} configuration errors:\n" + "\n".join(f"  {p}" for p in self))


def load(data, environ=None, source=None):
    """Build a validated Config from parsed TOML `data` and an environment mapping; a ConfigError
    names every problem found, one per line."""
    environ = os.environ if environ is None else environ
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a TOML table")
    problems = Problems()
    arrays = {"nodes", "plugins", "databases", "users", "limits", "rewrite", "tenants"}
    for name in sorted(set(data) - set(SECTIONS) - arrays):
        problems.append(f"unknown section [{name}]{did_you_mean(name, set(SECTIONS) | arrays)}; known: "
                        f"{', '.join(sorted(SECTIONS))}, nodes, databases, users, plugins, limits, rewrite, tenants")
    known_vars = set()
    cfg = Config(source=source)
    nested = {}  # tables inside a section ([[cache.rules]], [auth.jwt]...): taken out, loaded below
    for (section, key) in NESTED:
        if isinstance(data.get(section), dict) and key in data[section]:
            nested[(section, key)] = data[section][key]
            data = dict(data, **{section: {k: v for k, v in data[section].items() if k != key}})
    for section, keys in SECTIONS.items():
        env = {key: f"{ENV_PREFIX}{section.upper()}__{key.upper()}" for key in keys}
        known_vars.update(env.values())
        setattr(cfg, section, table_of(data.get(section, {}), keys, section, environ, env, problems=problems))
    for var in sorted(v for v in environ if v.startswith(ENV_PREFIX) and "__" in v and v not in known_vars):
        problems.append(f"{var}: no such setting (HELIOS_<SECTION>__<KEY>, e.g. HELIOS_POOL__MAX_SIZE)")
    cfg.nodes = problems.check(_load_nodes, data.get("nodes", []), problems, default=[])
    cfg.databases = problems.check(_load_named, data.get("databases", {}), "databases", DATABASE_SETTINGS,
                                   default={})
    cfg.database_nodes = _database_nodes(cfg.databases, problems)
    cfg.users = problems.check(_load_named, data.get("users", {}), "users", USER_SETTINGS, default={})
    cfg.plugins = data.get("plugins", {})
    cfg.limits = problems.check(_array, data.get("limits"), "limits", LIMIT_SETTINGS, problems, default=[])
    names = [limit.name for limit in cfg.limits]
    problems.extend(f"limits: {name!r} is used twice" for name in sorted({n for n in names if names.count(n) > 1}))
    cfg.rewrite = problems.check(_array, data.get("rewrite"), "rewrite", REWRITE_SETTINGS, problems, default=[])
    cfg.tenants = problems.check(_array, data.get("tenants"), "tenants", TENANT_SETTINGS, problems, default=[])
    names = [t.name for t in cfg.tenants]
    problems.extend(f"tenants: {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1}))
    problems.extend(rewrite_problems(cfg.rewrite))
    for (section, key), (kind, settings) in NESTED.items():
        given = nested.get((section, key))
        setattr(getattr(cfg, section), key, problems.check(kind, given, f"{section}.{key}", settings, problems,
                                                            default=kind(None, "", settings, Problems())))
    _check_cross(cfg, problems)  # (a bad value was replaced by its default: no false alarms)
    problems.raise_any()
    return cfg


def table_of(given, keys, where, environ=None, env=None, required=False, problems=None):
    """Validate one table against its settings: {key: value} as a namespace.

    Unset keys take their default (an environment variable first, when env names one); with
    `required`, a setting without a default must be given. Every problem is noted in `problems`
    (a bad value leaves the default); without it, the first one raises.
    """
    own = problems is None
    problems = Problems() if own else problems
    if not isinstance(given, dict):
        problems.append(f"[{where}] must be a table")
        given = {}
    for key in sorted(set(given) - set(keys)):
        problems.append(f"{where}.{key}: unknown setting{did_you_mean(key, keys)}")
    values = {}
    for key, setting in keys.items():
        var = env.get(key) if env else None
        values[key] = setting.default
        if var and var in environ:
            values[key] = problems.check(lambda: _coerce(setting, _from_env(setting, environ[var], var), var),
                                         default=setting.default)
        elif key in given:
            values[key] = problems.check(_coerce, setting, given[key], f"{where}.{key}", default=setting.default)
        elif required and setting.default is None:
            problems.append(f"{where}.{key}: required")
    if own:
        problems.raise_any()
    return Table(**values)


def did_you_mean(word, known):
    """' (did you mean "x"?)' for a misspelled key or section, or ''."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.7)
    return f' (did you mean "{close[0]}"?)' if close else ""


# Other managers' names for the roles: Patroni's replica/leader (and master), PostgreSQL's own words.
ROLE_ALIASES = {"replica": "standby", "sync_standby": "standby", "secondary": "standby", "leader": "primary",
                "master": "primary"}


def _load_nodes(entries, problems):
    if not isinstance(entries, list) or not entries:
        raise ConfigError("nodes: at least one [[nodes]] entry (name, host, port, role) is required")
    nodes, names, bad_roles = [], set(), set()
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get("role"), str):
            role = entry["role"].lower()
            entry = {**entry, "role": ROLE_ALIASES.get(role, role)}
            if entry["role"] not in ("primary", "standby"):
                bad_roles.add(i)  # (reported by table_of; not counted as a primary below)
        node = table_of(entry, NODE_KEYS, f"nodes[{i}]", required=True, problems=problems)
        if node.name in names:
            problems.append(f"nodes[{i}].name: {node.name!r} is used twice")
        names.add(node.name)
        nodes.append(node)
    primaries = [n.name for i, n in enumerate(nodes) if n.role == "primary" and i not in bad_roles]
    if len(primaries) > 1:
        problems.append(f"nodes: {', '.join(map(repr, primaries))} all have role = \"primary\" (the default): "
                        "give every node but the primary role = \"standby\"")
    return nodes


REQUIRED = frozenset(("cache.rules.table", "auth.rules.method", "limits.name", "rewrite.name",
                      "routing.tables.match", "tenants.name"))


def _array(entries, where, settings, problems):
    """[[where]] tables: a list of namespaces (the settings in REQUIRED must be given)."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected [[{where}]] tables ({', '.join(s.key for s in settings)})")
    keys = {s.key: s for s in settings}
    out = [table_of(entry, keys, f"{where}[{i}]", problems=problems) for i, entry in enumerate(entries)]
    for i, table in enumerate(out):
        problems.extend(f"{where}[{i}].{s.key}: required" for s in settings
                        if s.path in REQUIRED and not getattr(table, s.key))
    return out


def _subtable(given, where, settings, problems):
    """[where]: one table of settings inside a section."""
    return table_of({} if given is None else given, {s.key: s for s in settings}, where, problems=problems)


def _mapping(given, where, settings, problems):
    """[where]: names to names (pg_ident style: an external identity -> the user it may log in as)."""
    if given is None:
        return {}
    if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
        raise ConfigError(f'{where}: expected "external name" = "user" entries')
    return dict(given)


NESTED = {("cache", "rules"): (_array, CACHE_RULE_SETTINGS),
          ("routing", "tables"): (_array, ROUTING_TABLE_SETTINGS),
          ("auth", "rules"): (_array, AUTH_RULE_SETTINGS),
          ("auth", "jwt"): (_subtable, AUTH_JWT_SETTINGS),
          ("auth", "api_keys"): (_subtable, AUTH_API_KEY_SETTINGS),
          ("auth", "oauth2"): (_subtable, AUTH_OAUTH2_SETTINGS),
          ("auth", "cert"): (_subtable, AUTH_CERT_SETTINGS),
          ("auth", "ldap"): (_subtable, AUTH_LDAP_SETTINGS),
          ("auth", "map"): (_mapping, ())}


def _load_named(tables, section, settings):
    """[section.NAME] tables of overrides: {NAME: namespace}, unset keys None."""
    if not isinstance(tables, dict):
        raise ConfigError(f"[{section}] must hold tables such as [{section}.NAME]")
    keys = {s.key: s for s in settings}
    return {name: table_of(table, keys, f"{section}.{name}") for name, table in tables.items()}


def _database_nodes(databases, problems):
    """{database: node} for the [databases.NAME] served by a host of their own, outside the cluster."""
    out = {}
    for name, db in databases.items():
        if db.host is None:
            if db.port is not None:
                problems.append(f"databases.{name}.port: needs databases.{name}.host")
            continue
        port = db.port or 5432
        node = {s.key: s.default for s in NODE_SETTINGS}
        node.update(name=f"{db.host}:{port}", host=db.host, port=port)
        out[name] = Table(**node)
    return out


def _check_cross(cfg, problems):
    if cfg.topology.provider not in ("postgres", "patroni", "standalone"):
        from ..topology.providers import load as load_provider  # (a package's: it must load)
        problems.check(load_provider, cfg.topology.provider)
    if cfg.fleet.dcs_url:
        from ..topology.etcd import endpoints as etcd_endpoints
        try:
            etcd_endpoints(cfg.fleet.dcs_url, "fleet.dcs_url")
        except ValueError as e:
            problems.append(str(e))
    if cfg.topology.provider in ("patroni", "standalone") and cfg.failover.mode in ("promote", "command"):
        problems.append(f"failover.mode: {cfg.failover.mode!r} with topology.provider = "
                        f"{cfg.topology.provider!r} makes two deciders of one failover; with "
                        f"{cfg.topology.provider} the proxy follows (failover.mode = \"external\")")
    names = {n.name for n in cfg.nodes} | {"primary", "standby"}
    for i, rule in enumerate(cfg.routing.tables):
        if rule.node and rule.node not in names:
            problems.append(f"routing.tables[{i}].node: {rule.node!r} is no node name (nor primary or standby)")
        if bool(rule.node) == bool(rule.temperature):
            problems.append(f"routing.tables[{i}] ({rule.match!r}): give either node or temperature")
    for database in (None, *cfg.databases):
        low, high = cfg.pool_setting(database, "min_size"), cfg.pool_setting(database, "max_size")
        if low > high:
            where = f"databases.{database}" if database else "pool"
            problems.append(f"{where}.min_size: {low} is above max_size {high}")
    if cfg.tls.client_mode != "disable" and not (cfg.tls.client_cert_file and cfg.tls.client_key_file):
        problems.append(f"tls.client_mode: {cfg.tls.client_mode!r} needs tls.client_cert_file and "
                          "tls.client_key_file")
    if cfg.auth.method in ("md5", "scram-sha-256") and not (cfg.auth.users_file or cfg.auth.auth_user):
        problems.append(f"auth.method: {cfg.auth.method!r} needs auth.users_file or auth.auth_user")
    methods = {cfg.auth.method} | {r.method for r in cfg.auth.rules}
    jwt = cfg.auth.jwt
    if "jwt" in methods and not (jwt.public_key_file or jwt.jwks_file or jwt.jwks_url or jwt.secret):
        problems.append("auth.jwt: the jwt method needs auth.jwt.public_key_file, jwks_file, jwks_url or secret")
    if "cert" in methods:
        if not cfg.auth.cert.ca_file:
            problems.append("auth.cert.ca_file: required by the cert method")
        elif not os.path.isfile(cfg.auth.cert.ca_file):
            problems.append(f"auth.cert.ca_file: {cfg.auth.cert.ca_file!r}: no such file")
        if cfg.tls.client_mode == "disable":
            problems.append("tls.client_mode: the cert method needs TLS towards clients (allow, prefer or require)")
    if "ldap" in methods and not cfg.auth.ldap.url:
        problems.append("auth.ldap.url: required by the ldap method")
    if "ldap" in methods and not (cfg.auth.ldap.bind_dn or cfg.auth.ldap.base_dn):
        problems.append("auth.ldap: the ldap method needs bind_dn (simple bind) or base_dn (search+bind)")
    if "oauth2" in methods and not cfg.auth.oauth2.introspection_url:
        problems.append("auth.oauth2.introspection_url: required by the oauth2 method")
    if "api_key" in methods and not cfg.auth.api_keys.file and not cfg.fleet.dcs_url:
        problems.append("auth.api_keys.file: required by the api_key method (or fleet.dcs_url: the keys in etcd)")
    for i, rule in enumerate(cfg.auth.rules):
        problem = address_range(rule.address)
        if problem:
            problems.append(f"auth.rules[{i}].address: {rule.address!r}: {problem}")
    for path in ("auth.jwt.public_key_file", "auth.jwt.jwks_file"):
        value = getattr(jwt, path.rsplit(".", 1)[1])
        if value and not os.path.isfile(value):
            problems.append(f"{path}: {value!r}: no such file")
    for path in ("auth.users_file", "tls.client_cert_file", "tls.client_key_file", "tls.server_ca_file"):
        section, key = path.split(".")
        value = getattr(getattr(cfg, section), key)
        if value and not os.path.isfile(value):
            problems.append(f"{path}: {value!r}: no such file")
    if cfg.server.unix_socket_dir and not os.path.isdir(cfg.server.unix_socket_dir):
        problems.append(f"server.unix_socket_dir: {cfg.server.unix_socket_dir!r}: no such directory")
    if cfg.admin.enabled and not loopback(cfg.admin.listen) and not (cfg.admin.token or cfg.admin.tokens):
        problems.append(f"admin.listen: {cfg.admin.listen!r} is beyond loopback: set admin.token "
                          "(or HELIOS_ADMIN__TOKEN) too")
    if cfg.topology.provider == "patroni" and not (cfg.topology.patroni_url or cfg.topology.dcs_url):
        problems.append('topology.patroni_url: required with topology.provider = "patroni" (or topology.dcs_url)')
    if cfg.topology.dcs_url:
        if not cfg.topology.dcs_url.startswith("etcd3://"):
            problems.append(f"topology.dcs_url: {cfg.topology.dcs_url!r}: expected etcd3://HOST:PORT[,HOST:PORT...]")
        if not cfg.topology.scope:
            problems.append("topology.scope: required with topology.dcs_url (Patroni's scope)")
    if cfg.failover.mode == "command" and not cfg.failover.promote_command:
        problems.append('failover.promote_command: required with failover.mode = "command"')
    if cfg.cache.enabled and cfg.server.workers > 1 and not cfg.cache.redis_url:
        problems.append("cache.redis_url: required with cache.enabled and server.workers > 1 (the workers "
                        "hear of each other's writes through it)")
    if cfg.nodes and not any(n.role == "primary" for n in cfg.nodes):
        problems.append("nodes: no node has role = \"primary\"")


def address_range(text):
    """None if text is "all" or a CIDR range, else what is wrong with it."""
    if text == "all":
        return None
    import ipaddress
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return 'expected "all" or an address range such as 10.0.0.0/8'
    return None


def loopback(listen):
    """Whether a host:port listens on loopback only."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_file(path, environ=None):
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    return load(data, environ, source=os.path.abspath(path))
