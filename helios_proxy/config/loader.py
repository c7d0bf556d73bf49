"""Load TOML, apply HELIOS_<SECTION>__<KEY> environment overrides, validate against the schema."""
import os
import tomllib
from types import SimpleNamespace

from ..errors import ConfigError
from .schema import NODE_SETTINGS, SETTINGS

ENV_PREFIX = "HELIOS_"
SECTIONS = {}
for _s in SETTINGS:
    SECTIONS.setdefault(_s.section, {})[_s.key] = _s
NODE_KEYS = {s.key: s for s in NODE_SETTINGS}


class Config(SimpleNamespace):
    """Sections as attributes (`config.pool.max_size`), nodes as a list of namespaces."""

    source = None

    def redacted(self):
        """The configuration as plain data with secrets replaced, safe to log or serve."""
        out = {}
        for section, keys in SECTIONS.items():
            values = getattr(self, section)
            out[section] = {k: ("********" if s.secret and getattr(values, k) else getattr(values, k))
                            for k, s in keys.items()}
        out["nodes"] = [vars(n).copy() for n in self.nodes]
        return out


def _coerce(setting, value, path):
    kind = setting.type
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
        if setting.type is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes", "on")
        return setting.type(text)
    except ValueError:
        raise ConfigError(f"{var} (for {setting.path}): expected {setting.type.__name__}, got {text!r}") from None


def load(data, environ=None, source=None):
    """Build a validated Config from parsed TOML `data` and an environment mapping."""
    environ = os.environ if environ is None else environ
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a TOML table")
    unknown = set(data) - set(SECTIONS) - {"nodes", "plugins"}
    if unknown:
        raise ConfigError(f"unknown section [{sorted(unknown)[0]}]; known: {', '.join(sorted(SECTIONS))}, nodes")
    cfg = Config(source=source)
    for section, keys in SECTIONS.items():
        given = data.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"[{section}] must be a table")
        extra = set(given) - set(keys)
        if extra:
            raise ConfigError(f"{section}.{sorted(extra)[0]}: unknown setting")
        values = {}
        for key, setting in keys.items():
            var = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            if var in environ:
                values[key] = _coerce(setting, _from_env(setting, environ[var], var), var)
            elif key in given:
                values[key] = _coerce(setting, given[key], setting.path)
            else:
                values[key] = setting.default
        setattr(cfg, section, SimpleNamespace(**values))
    cfg.nodes = _load_nodes(data.get("nodes", []))
    cfg.plugins = data.get("plugins", {})
    _check_cross(cfg)
    return cfg


def _load_nodes(entries):
    if not isinstance(entries, list) or not entries:
        raise ConfigError("nodes: at least one [[nodes]] entry (name, host, port, role) is required")
    nodes, names = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"nodes[{i}]: must be a table")
        extra = set(entry) - set(NODE_KEYS)
        if extra:
            raise ConfigError(f"nodes[{i}].{sorted(extra)[0]}: unknown setting")
        values = {}
        for key, setting in NODE_KEYS.items():
            if key in entry:
                values[key] = _coerce(setting, entry[key], f"nodes[{i}].{key}")
            elif setting.default is None:
                raise ConfigError(f"nodes[{i}].{key}: required")
            else:
                values[key] = setting.default
        if values["name"] in names:
            raise ConfigError(f"nodes[{i}].name: {values['name']!r} is used twice")
        names.add(values["name"])
        nodes.append(SimpleNamespace(**values))
    return nodes


def _check_cross(cfg):
    if cfg.pool.min_size > cfg.pool.max_size:
        raise ConfigError(f"pool.min_size: {cfg.pool.min_size} is above pool.max_size {cfg.pool.max_size}")
    if cfg.tls.client_mode != "disable" and not (cfg.tls.client_cert_file and cfg.tls.client_key_file):
        raise ConfigError(f"tls.client_mode: {cfg.tls.client_mode!r} needs tls.client_cert_file and "
                          "tls.client_key_file")
    if cfg.auth.method != "trust" and not (cfg.auth.users_file or cfg.auth.auth_user):
        raise ConfigError(f"auth.method: {cfg.auth.method!r} needs auth.users_file or auth.auth_user")
    for path in ("auth.users_file", "tls.client_cert_file", "tls.client_key_file", "tls.server_ca_file"):
        section, key = path.split(".")
        value = getattr(getattr(cfg, section), key)
        if value and not os.path.isfile(value):
            raise ConfigError(f"{path}: {value!r}: no such file")
    if not any(n.role == "primary" for n in cfg.nodes):
        raise ConfigError("nodes: no node has role = \"primary\"")


def load_file(path, environ=None):
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    return load(data, environ, source=os.path.abspath(path))
