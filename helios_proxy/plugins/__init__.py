"""Plugins: pluggy hooks (hookspecs.py) implemented by Python packages found through the
`helios_proxy` entry-point group and by sandboxed WASM modules (wasm.py), managed by manager.py.
A plugin's `on_query_start` returns one of the actions in actions.py."""
