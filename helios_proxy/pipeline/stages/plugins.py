"""The plugins stage (the spec's "WASM Plugins"): every plugin's on_query_start may go on, reject,
rewrite or answer the query (plugins/manager.py). Built only when some plugin implements a
per-query hook; on_query_complete is called when the answer has reached the client (frontend/relay.py)."""
import time

from ..stage import Stage


class Plugins(Stage):
    name = "plugins"
    uses_plugins = True

    def __init__(self, config, plugins):
        super().__init__(config)
        self.plugins = plugins

    @classmethod
    def enabled(cls, config, plugins=None):
        return plugins is not None and bool(plugins.start_impls or plugins.complete_impls)

    def process(self, ctx):
        ctx.started = time.monotonic()
        return self.plugins.query_start(ctx)
