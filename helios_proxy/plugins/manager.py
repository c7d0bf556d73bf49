"""The plugin manager: built-in plugins first, then the `helios_proxy` entry-point group, then WASM
modules from `plugins.wasm_dir`. As with pytest and datasette, an installed plugin is active unless
its `[plugins.NAME] enabled = false`.

Isolation: every call of a plugin's hook goes through `_call`: an exception (or a WASM trap) is that
plugin's failure only: logged, counted, and by its `policy` skipped ("fail-open", the default) or
turned into a rejection of the query ("fail-closed", SQLSTATE XX000). A call longer than its
`budget_ms` is cut at the next cooperative point (gevent.Timeout; WASM modules are bounded by fuel
instead) and counted as a failure.
"""
import importlib
import logging
import time
from collections import Counter
from importlib.metadata import entry_points

import gevent
import pluggy

from ..errors import ConfigError
from ..pipeline.stage import Action, StageResult
from . import hookspecs
from .view import QueryInfo

log = logging.getLogger(__name__)
GROUP = "helios_proxy"
MANAGER_KEYS = ("enabled", "policy", "budget_ms")
GLOBAL_KEYS = {"enabled": bool, "modules": list, "wasm_dir": str, "budget_ms": (int, float), "wasm_fuel": int,
               "wasm_memory_mb": (int, float), "wasm_reload_interval": (int, float)}
# [plugins] keys and [plugins.NAME] keys the manager reads: (key, default, description), for the
# configuration reference (config/docs.py; a test checks that every key is described).
GLOBAL_DOCS = (
    ("enabled", "true", "Load plugins at all (entry points, modules, WASM)."),
    ("modules", "[]", "Python modules to load as plugins by name, without packaging."),
    ("wasm_dir", '""', "Folder of WASM modules (*.wasm, *.wat), watched and hot-reloaded; needs wasmtime."),
    ("budget_ms", "100", "Milliseconds a plugin hook may take per call (cut at the next cooperative point)."),
    ("wasm_fuel", "10000000", "Fuel units a WASM module may burn per call."),
    ("wasm_memory_mb", "16", "Memory cap of a WASM module, MiB."),
    ("wasm_reload_interval", "0.5", "Seconds between looks at wasm_dir for changes."),
)
TABLE_DOCS = (
    ("enabled", "true", "false: this plugin is not loaded (a table that only disables an absent plugin is fine)."),
    ("policy", '"fail-open"', "When the plugin fails: fail-open (the query goes on) or fail-closed (refused)."),
    ("budget_ms", "[plugins] budget_ms", "This plugin's own time budget per call."),
)
BUILTINS = ()  # (name, module or instance): registered before everything else


class PluginTimeout(Exception):
    pass


class PluginError(ConfigError):
    """A bad [plugins] setting (a configuration error: the proxy does not start)."""


def plugin_settings(plugins):
    """Split the [plugins] table into global settings and per-plugin tables; raise PluginError."""
    if not isinstance(plugins, dict):
        raise PluginError("[plugins] must be a table")
    glob, tables = {}, {}
    for key, value in plugins.items():
        if isinstance(value, dict):
            policy = value.get("policy", "fail-open")
            if policy not in ("fail-open", "fail-closed"):
                raise PluginError(f"plugins.{key}.policy: expected fail-open or fail-closed, got {policy!r}")
            tables[key] = value
        elif key in GLOBAL_KEYS:
            if not isinstance(value, GLOBAL_KEYS[key]) or (GLOBAL_KEYS[key] is int and isinstance(value, bool)):
                raise PluginError(f"plugins.{key}: wrong type {type(value).__name__}")
            glob[key] = value
        else:
            raise PluginError(f"plugins.{key}: unknown setting (plugin settings go in [plugins.{key}])")
    return glob, tables


class PluginManager:
    def __init__(self, config):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.settings, self.tables = plugin_settings(config.plugins)
        self.sources = {}      # plugin name -> where it came from
        self.disabled = []     # names turned off by the config
        self.broken = {}       # name -> why it could not load
        self.failures = Counter()
        self.calls = Counter()
        self.wasm = None
        self.start_impls = self.complete_impls = ()
        self.on_refresh = None  # callable after the hook set changed (the proxy rebuilds its pipeline)

    @property
    def enabled(self):
        return self.settings.get("enabled", True)

    def load(self, wasm=True, watch=True):
        """Register every plugin; with watch, the WASM folder is watched for changes."""
        if not self.enabled:
            return self
        for name, plugin in BUILTINS:
            self._register(name, plugin, "built-in")
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            if self.tables.get(ep.name, {}).get("enabled", True) is False:
                self.disabled.append(ep.name)
                continue
            try:
                plugin = ep.load()
            except Exception as e:  # a broken package must not stop the proxy
                log.error("plugin %s (%s) failed to load: %s", ep.name, ep.value, e)
                self.broken[ep.name] = f"{type(e).__name__}: {e}"
                continue
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?"
            self._register(ep.name, plugin, f"entry point {ep.value} ({dist})")
        for module in self.settings.get("modules", []):  # plugins by module name, no packaging needed
            if self.tables.get(module, {}).get("enabled", True) is False:
                self.disabled.append(module)
                continue
            try:
                plugin = importlib.import_module(module)
            except Exception as e:
                log.error("plugin module %s failed to load: %s", module, e)
                self.broken[module] = f"{type(e).__name__}: {e}"
                continue
            self._register(module, plugin, f"module {module} (plugins.modules)")
        if wasm and self.settings.get("wasm_dir"):
            try:
                from .wasm import WasmHost  # wasmtime is an optional extra
            except ImportError as e:
                raise PluginError(f"plugins.wasm_dir: WASM plugins need wasmtime ({e}); "
                                  "pip install 'helios-proxy[wasm]'") from None
            self.wasm = WasmHost(self, self.settings)
            self.wasm.load_all(watch)
        self.pm.check_pending()
        self._check_tables()
        self.refresh()
        return self

    def _check_tables(self):
        """A [plugins.NAME] table no plugin answers to is a typo or a missing package: an error
        (a table that only disables an absent plugin is fine)."""
        known = set(self.sources) | set(self.disabled) | set(self.broken)
        unknown = sorted(name for name, table in self.tables.items()
                         if name not in known and table.get("enabled", True) is not False)
        if unknown:
            raise PluginError("; ".join(f"plugins.{name}: no plugin of that name is installed or listed in "
                                        "plugins.modules" for name in unknown))

    def _register(self, name, plugin, source):
        self.pm.register(plugin, name=name)
        self.sources[name] = source
        configure = getattr(plugin, "configure", None)
        if callable(configure):
            table = {k: v for k, v in self.tables.get(name, {}).items() if k not in MANAGER_KEYS}
            try:
                configure(table)
            except Exception as e:
                log.error("plugin %s rejected its settings: %s", name, e)
                self.pm.unregister(plugin)
                del self.sources[name]
                self.broken[name] = f"configure: {e}"

    def unregister(self, name):
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.sources.pop(name, None)
        self.refresh()

    def refresh(self):
        """Snapshot the implementations of the per-query hooks (registration order)."""
        self.start_impls = tuple(self.pm.hook.on_query_start.get_hookimpls())
        self.complete_impls = tuple(self.pm.hook.on_query_complete.get_hookimpls())
        if self.on_refresh is not None:
            self.on_refresh()

    def listing(self):
        """[(name, source, hooks)] of loaded plugins, then disabled and broken ones."""
        out = []
        for name, source in self.sources.items():
            plugin = self.pm.get_plugin(name)
            hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or ())
            out.append((name, source, hooks))
        out += [(name, "disabled by the config", []) for name in self.disabled]
        out += [(name, f"failed to load: {why}", []) for name, why in self.broken.items()]
        return out

    # --- calling hooks ------------------------------------------------------------------------
    def _policy(self, name):
        return self.tables.get(name, {}).get("policy", "fail-open")

    def _budget(self, name):
        return self.tables.get(name, {}).get("budget_ms", self.settings.get("budget_ms", 100)) / 1000

    def _call(self, impl, **kwargs):
        """One plugin's hook, isolated: (ok, result)."""
        name = impl.plugin_name
        self.calls[name] += 1
        budget = self._budget(name)
        started = time.monotonic()
        try:
            with gevent.Timeout(budget, PluginTimeout(f"over its budget of {budget * 1000:g} ms")):
                result = impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception as e:
            self.failures[name] += 1
            log.error("plugin %s failed in %s: %s: %s", name, impl.function.__name__, type(e).__name__, e)
            return False, e
        took = time.monotonic() - started
        if took > budget:
            self.failures[name] += 1
            log.warning("plugin %s took %.0f ms in %s (budget %g ms)", name, took * 1000,
                        impl.function.__name__, budget * 1000)
        return True, result

    def query_start(self, ctx):
        """Run every on_query_start; the first action that is not "go on" decides (rewrites apply
        and go on to the next plugin). Returns a StageResult."""
        info = QueryInfo(ctx)  # (what plugins see: view.py)
        for impl in self.start_impls:
            ok, result = self._call(impl, ctx=info)
            if not ok:
                if self._policy(impl.plugin_name) == "fail-closed":
                    return StageResult.reject("XX000", f"plugin {impl.plugin_name} failed: {result}")
                continue
            if result is None:
                continue
            if not isinstance(result, StageResult):
                self.failures[impl.plugin_name] += 1
                log.error("plugin %s returned %r from on_query_start; use helios_proxy.plugins.actions",
                          impl.plugin_name, result)
                continue
            if result.action is Action.REWRITE:
                ctx.sql = result.sql
                continue
            if result.action is not Action.CONTINUE:
                ctx.tags.setdefault("decided_by", impl.plugin_name)
                return result
        return StageResult.CONTINUE

    def query_complete(self, ctx, outcome):
        info = QueryInfo(ctx)
        for impl in self.complete_impls:
            self._call(impl, ctx=info, outcome=outcome)

    def notify(self, hook, **kwargs):
        """Call every implementation of a lifecycle hook, each isolated."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            self._call(impl, **kwargs)

    def close(self):
        if self.wasm is not None:
            self.wasm.stop()
