"""The schema routing stage (the spec's "route based on table metadata and data temperature", after
the cache): a read the route stage sent to a standby may go to the node its tables' rules name, or
need a standby within its tables' lag (routing/tables.py); every query's written tables teach
their temperature. Built when splitting is on and `[[routing.tables]]` or `cold_max_lag_ms` is set."""
from ...routing.router import PRIMARY, STANDBY, Router
from ..stage import Stage, StageResult


class SchemaRouting(Stage):
    name = "schema_routing"
    callback_safe = True

    @classmethod
    def enabled(cls, config):
        return Router.active(config) and bool(config.routing.tables or config.routing.cold_max_lag_ms)

    def process(self, ctx):
        session = ctx.session
        if ctx.large or not session.identity.pooled:
            return StageResult.CONTINUE
        router = session.proxy.router
        read, written = router.tables.tables(ctx.sql, ctx.skeleton)
        if read is None:  # (does not parse: the server says why)
            return StageResult.CONTINUE
        if written:
            router.tables.wrote(written)
        decided = ctx.decided
        if decided is None or decided.target != (STANDBY, None) or not read:
            return StageResult.CONTINUE
        node, decided.lag = router.tables.decide(read)
        decided.tables = read
        if node == "primary":
            decided.target = (PRIMARY, None)
        elif node is not None:
            fit = {n.name for n in router.read_nodes()}
            role = router.tracker.roles.get(node)
            decided.target = (STANDBY, node) if role == STANDBY and node in fit else (PRIMARY, None)
        return StageResult.CONTINUE
