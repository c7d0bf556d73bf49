"""The cache stage (cache/): after the routing hints, before the query goes to a server.

A read the cache may serve (cache/__init__.py admit) is looked up: a hit in the simple protocol is
answered here (its RowDescription, DataRows and CommandComplete as the server sent them, then a
ReadyForQuery); a miss carries a Fill the forwarder starts when the Query goes out, so the answer
is stored on its way back (frontend/relay.py). An extended-protocol Parse only carries its Admission:
the key needs the Bind's parameters, which the forwarder reads (cache/extended.py). Anything else
is screened for what it writes, which is invalidated before it goes out.
"""
from ...errors import ProxyError
from ...routing.hints import parse_hints
from ...cache.store import READY_IDLE
from ..stage import Stage, StageResult


class Cache(Stage):
    name = "cache"
    leaves_reads_alone = True

    @classmethod
    def enabled(cls, config):
        return config.cache.enabled

    def process(self, ctx):
        session = ctx.session
        cache = session.proxy.cache
        sql = ctx.sql
        if ctx.large:  # too large to parse: a write of anything, unless it is plainly a SELECT
            if ctx.word not in ("select", "values", "table", "show"):
                cache.wrote(session, None)
            return StageResult.CONTINUE
        shape, values = cache.shapes.get(sql)
        if shape.why_not is not None or shape.sets:  # (a SELECT of set_config(): never served, and noted)
            cache.not_a_read(session, shape)
            return StageResult.CONTINUE
        if shape.functions:
            cache.check_functions(session, shape)
        if cache.cold(shape):  # its answers are almost never asked again: not looked up, not stored
            return StageResult.CONTINUE
        if "/*+" in sql[:4096]:
            try:
                parse_hints(sql, None)
            except ProxyError as e:
                return StageResult.reject(e.sqlstate, e.message)
        adm = cache.admit(session, shape, sql)
        if adm is None:
            return StageResult.CONTINUE
        if ctx.protocol != "simple":  # (the key needs the Bind: the forwarder looks it up)
            ctx.decide().cache = (adm, values)
            shape.stats = cache.classes.get(adm.fingerprint)
            return StageResult.CONTINUE
        entry, fill = cache.lookup(session, adm, cache.key(session, adm, values), hash(sql))
        shape.stats = cache.classes.get(adm.fingerprint)
        if entry is not None and entry.rlen >= 0:
            cache.remember(session, sql, adm, values)  # (asked again: the quick path next time)
            return StageResult.respond(entry.wire[:-len(READY_IDLE)])
        if fill is not None:
            decided = ctx.decide()
            store, decided.target = cache.fill_target(adm, decided.target)
            if store:
                decided.cache = fill
        return StageResult.CONTINUE
