"""The WASM plugin host (wasmtime, the `wasm` extra): every `.wasm` or `.wat` file in
`plugins.wasm_dir` is a plugin named `wasm:FILE-STEM`, sandboxed: no WASI (no files, no network),
`wasm_fuel` units of fuel per call, memory capped at `wasm_memory_mb`, a trap ends that call only.
A changed file is compiled (modules are cached by content) and swapped in atomically; calls already
running finish on the old instance; a file that does not compile is reported and the old version
keeps serving. The ABI (documented in plugins/README.md):

guest exports   memory; alloc(size i32) -> ptr i32 (the host keeps and reuses this buffer for
                later calls while the text fits: it must stay valid until the next alloc);
                on_query_start(sql_ptr i32, sql_len i32)               (optional)
                on_query_complete(sql_ptr i32, sql_len i32, micros i32) (optional)
host imports    (module "env", all optional)
                log(ptr, len)
                ctx_get(key_ptr, key_len, out_ptr, out_cap) -> len (-1: no such key); keys: sql, user,
                        database, protocol, client, error, config:NAME (its [plugins."wasm:NAME"] table)
                reject(code_ptr, code_len, msg_ptr, msg_len)    answer with an ErrorResponse
                rewrite(ptr, len)                               run this SQL instead
                tag(key_ptr, key_len, value_ptr, value_len)     annotate the query (ctx.tags)
"""
import hashlib
import logging
import os
from types import SimpleNamespace

import wasmtime

from ..periodic import Periodic
from . import actions
from .hookspecs import hookimpl

log = logging.getLogger(__name__)
SUFFIXES = (".wasm", ".wat")


class WasmCall:
    """What one call of a guest sees and decides."""

    def __init__(self, ctx, plugin_config, extra=None):
        self.ctx, self.config, self.extra = ctx, plugin_config, extra or {}
        self.result = None

    def value(self, key):
        if key.startswith("config:"):
            value = self.config.get(key[7:])
            return None if value is None else str(value)
        if key in self.extra:
            return self.extra[key]
        session = self.ctx.session
        return {"sql": self.ctx.sql, "user": getattr(session, "user", None),
                "database": getattr(session, "database", None), "protocol": self.ctx.protocol,
                "client": session.peer[0] if getattr(session, "peer", None) else None}.get(key)


class Instance:
    """One instantiated module with its own store and memory."""

    def __init__(self, host, module, name):
        self.name = name
        self.store = wasmtime.Store(host.engine)
        self.store.set_limits(memory_size=host.memory_limit)
        self.call = None
        linker = wasmtime.Linker(host.engine)
        i32 = wasmtime.ValType.i32()
        for fname, params, results, fn in (
                ("log", 2, 0, self._log), ("ctx_get", 4, 1, self._ctx_get), ("reject", 4, 0, self._reject),
                ("rewrite", 2, 0, self._rewrite), ("tag", 4, 0, self._tag)):
            linker.define_func("env", fname, wasmtime.FuncType([i32] * params, [i32] * results), fn,
                               access_caller=True)
        self.instance = linker.instantiate(self.store, module)
        exports = self.instance.exports(self.store)
        self.memory = exports["memory"]
        self.alloc = exports["alloc"]
        self.start = exports.get("on_query_start")
        self.complete = exports.get("on_query_complete")
        self.buffer, self.capacity = 0, 0  # the guest buffer from alloc(), reused while the text fits

    # host functions: read and write the guest's memory through the caller
    def _read(self, caller, ptr, length):
        if length < 0 or length > 1 << 20:
            raise wasmtime.WasmtimeError("string too long")
        return bytes(caller["memory"].read(caller, ptr, ptr + length)).decode("utf-8", "replace")

    def _log(self, caller, ptr, length):
        log.info("wasm %s: %s", self.name, self._read(caller, ptr, length))

    def _ctx_get(self, caller, kptr, klen, out, cap):
        value = self.call.value(self._read(caller, kptr, klen)) if self.call else None
        if value is None:
            return -1
        data = value.encode()[:max(cap, 0)]
        caller["memory"].write(caller, data, out)
        return len(data)

    def _reject(self, caller, cptr, clen, mptr, mlen):
        self.call.result = actions.reject(self._read(caller, cptr, clen), self._read(caller, mptr, mlen))

    def _rewrite(self, caller, ptr, length):
        self.call.result = actions.rewrite(self._read(caller, ptr, length))

    def _tag(self, caller, kptr, klen, vptr, vlen):
        self.call.ctx.tags[self._read(caller, kptr, klen)] = self._read(caller, vptr, vlen)

    def invoke(self, func, call, text, *extra, fuel):
        """Copy text into guest memory and call func(ptr, len, *extra) with fuel; returns call.result."""
        data = text.encode()
        self.call = call
        try:
            self.store.set_fuel(fuel)
            if len(data) > self.capacity:  # one guest call saved per query (each costs tens of us)
                self.capacity = max(len(data), 4096)
                self.buffer = self.alloc(self.store, self.capacity)
            self.memory.write(self.store, data, self.buffer)
            func(self.store, self.buffer, len(data), *extra)
            return call.result
        finally:
            self.call = None


class WasmPlugin:
    """The pluggy-facing side of one module file; `current` is swapped on reload."""

    def __init__(self, host, path, name):
        self.host, self.path, self.name = host, path, name
        self.current = None
        self.digest = None
        self.mtime = None

    def hooks(self):
        """A plugin object with only the hooks the module exports."""
        ns = SimpleNamespace()
        if self.current.start is not None:
            def on_query_start(ctx):
                return self.on_query_start(ctx)
            ns.on_query_start = hookimpl(on_query_start)
        if self.current.complete is not None:
            def on_query_complete(ctx, outcome):
                return self.on_query_complete(ctx, outcome)
            ns.on_query_complete = hookimpl(on_query_complete)
        return ns

    def on_query_start(self, ctx):
        inst = self.current  # a reload swaps self.current; this call goes on with inst
        call = WasmCall(ctx, self.host.config_of(self.name))
        try:
            return inst.invoke(inst.start, call, ctx.sql, fuel=self.host.fuel)
        except wasmtime.WasmtimeError as e:  # traps (out of fuel, unreachable, memory) included
            raise RuntimeError(f"wasm trap: {str(e).splitlines()[0]}") from None

    def on_query_complete(self, ctx, outcome):
        inst = self.current
        call = WasmCall(ctx, self.host.config_of(self.name), {"error": outcome.error})
        try:
            inst.invoke(inst.complete, call, ctx.sql, min(int(outcome.seconds * 1e6), 2**31 - 1),
                        fuel=self.host.fuel)
        except wasmtime.WasmtimeError as e:
            raise RuntimeError(f"wasm trap: {str(e).splitlines()[0]}") from None


class WasmHost(Periodic):
    def __init__(self, manager, settings):
        self.manager = manager
        self.folder = settings["wasm_dir"]
        self.fuel = int(settings.get("wasm_fuel", 10_000_000))
        self.memory_limit = int(settings.get("wasm_memory_mb", 16) * (1 << 20))
        self.reload_interval = float(settings.get("wasm_reload_interval", 0.5))
        config = wasmtime.Config()
        config.consume_fuel = True
        self.engine = wasmtime.Engine(config)
        self.modules = {}   # sha256 -> compiled Module
        self.plugins = {}   # plugin name -> WasmPlugin
        self.errors = {}    # plugin name -> last load error

    def config_of(self, name):
        return self.manager.tables.get(name, {})

    def interval(self):
        return self.reload_interval

    def _files(self):
        try:
            names = sorted(os.listdir(self.folder))
        except OSError as e:
            log.error("plugins.wasm_dir %s: %s", self.folder, e.strerror)
            return {}
        return {f"wasm:{os.path.splitext(n)[0]}": os.path.join(self.folder, n) for n in names if n.endswith(SUFFIXES)}

    def compile(self, path):
        """(digest, Module) for a file; raises WasmtimeError/OSError on a bad one."""
        with open(path, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        module = self.modules.get(digest)
        if module is None:
            wasm = wasmtime.wat2wasm(data.decode()) if path.endswith(".wat") else data
            module = self.modules[digest] = wasmtime.Module(self.engine, wasm)
        return digest, module

    def load(self, name, path):
        """Load or reload one file; True when a new version serves."""
        plugin = self.plugins.get(name) or WasmPlugin(self, path, name)
        try:
            mtime = os.stat(path).st_mtime_ns
            if mtime == plugin.mtime:
                return False
            digest, module = self.compile(path)
            plugin.mtime = mtime
            if digest == plugin.digest:
                return False
            instance = Instance(self, module, name)
        except (wasmtime.WasmtimeError, OSError, KeyError, UnicodeDecodeError) as e:
            plugin.mtime = os.stat(path).st_mtime_ns if os.path.exists(path) else None
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.errors[name] = first
            log.error("wasm plugin %s: %s does not load (%s)%s", name, path, first,
                      "; the previous version keeps serving" if plugin.current else "")
            return False
        old_hooks = plugin.current is not None and (plugin.current.start is None, plugin.current.complete is None)
        plugin.current, plugin.digest = instance, digest
        self.errors.pop(name, None)
        if name not in self.plugins:
            self.plugins[name] = plugin
            self.manager._register(name, plugin.hooks(), f"wasm {path}")
        elif old_hooks != (instance.start is None, instance.complete is None):  # other exports now
            self.manager.pm.unregister(name=name)
            self.manager._register(name, plugin.hooks(), f"wasm {path}")
        log.warning("wasm plugin %s loaded from %s", name, path)
        return True

    def load_all(self, watch=True):
        for name, path in self._files().items():
            if self.manager.tables.get(name, {}).get("enabled", True) is False:
                self.manager.disabled.append(name)
                continue
            self.load(name, path)
        if watch:
            self.start()

    def tick(self):
        files = self._files()
        changed = False
        for name, path in files.items():
            if name not in self.manager.disabled:
                changed |= self.load(name, path)
        for name in list(self.plugins):
            if name not in files:
                log.warning("wasm plugin %s: file removed; unloading it", name)
                del self.plugins[name]
                self.manager.unregister(name)
                changed = True
        if changed:
            self.manager.refresh()

