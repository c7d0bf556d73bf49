"""Plugins the plugin tests load with `[plugins] modules = [...]` (no packaging needed)."""
