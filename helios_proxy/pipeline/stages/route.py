"""Read/write splitting: decides where the next lease goes (transaction and statement pooling).

Only the first query of a transaction decides: inside a lease everything follows it. Order of
precedence: a /*+ route=... */ or /*+ node=... */ hint, the session's SET helios.route, then the
classification (routing/classify.py). A pinned session stays on the primary.

Read-your-writes across sessions: `SHOW helios.write_lsn` gives the WAL position of this session's
last write transaction; another session that runs `SET helios.read_after = '<that LSN>'` reads only
from standbys that have replayed it (or from the primary).
"""
import re

from ...errors import ProxyError
from ...protocol import codec
from ...routing.classify import BEGIN_READ_ONLY, READ
from ...routing.hints import INVALID_PARAMETER_VALUE, parse_hints
from ...routing.router import PRIMARY, STANDBY, Router, lsn
from ..stage import Stage, StageResult

SET_ROUTE = re.compile(r"^\s*set\s+(?:session\s+)?helios\.route\s*(?:=|to)\s*'?(\w+)'?\s*;?\s*$", re.I)
SET_READ_AFTER = re.compile(r"^\s*set\s+(?:session\s+)?helios\.read_after\s*(?:=|to)\s*'([^']*)'\s*;?\s*$", re.I)
LSN_TEXT = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
SHOW_WRITE_LSN = re.compile(r"^\s*show\s+helios\.write_lsn\s*;?\s*$", re.I)
ROUTE_VALUES = {"primary": PRIMARY, "standby": STANDBY, "auto": None, "default": None}


class Route(Stage):
    name = "route"
    callback_safe = True
    leaves_reads_alone = True
    aims_lease = True  # (for a query its other effects leave alone: not a helios command, not a named statement)

    @classmethod
    def enabled(cls, config):
        return Router.active(config)

    @staticmethod
    def fast_ready(session):
        """Whether it may run in the fast path's callback for session now: not while its database's
        function catalog must be loaded first (the session's greenlet waits for it)."""
        return session.proxy.router.catalog_loaded(session.identity.database)

    def process(self, ctx):
        session = ctx.session
        if not session.identity.pooled:
            return StageResult.CONTINUE
        router = session.proxy.router
        sql = ctx.sql
        if not ctx.large and "helios." in sql:
            answer = self.session_command(ctx, session, sql)
            if answer is not None:
                return answer
        override = SET_ROUTE.match(sql) if not ctx.large else None
        if override:
            value = override.group(1).lower()
            if value not in ROUTE_VALUES:
                return StageResult.reject(INVALID_PARAMETER_VALUE, f"invalid value for helios.route: {value!r}")
            ctx.decide().route_override = ROUTE_VALUES[value]
            return StageResult.respond(codec.message(b"C", b"SET\0"))
        if session.server is not None:  # inside a transaction (or pinned): the lease decided already
            return StageResult.CONTINUE
        try:
            hints = parse_hints(sql, {n.name for n in self.config.nodes}) if "/*+" in sql[:4096] else {}
        except ProxyError as e:
            return StageResult.reject(e.sqlstate, e.message)
        if "node" in hints:
            target = (STANDBY if router.tracker.roles.get(hints["node"]) == STANDBY else PRIMARY, hints["node"])
        elif hints.get("route") in (PRIMARY, STANDBY):
            target = (hints["route"], None)
        elif session.slot.pinned or (ctx.decided is not None and ctx.decided.pin):
            target = (PRIMARY, None)
        elif session.route.override:
            target = (session.route.override, None)
            if ctx.statement and not ctx.large:  # (a named statement: its later Binds follow its own route)
                ctx.decide().statement_target = (ctx.statement, self.classified(ctx, session, router))
        elif ctx.large:  # too large to parse on the event loop: the primary can run anything
            router.count_large()
            target = (PRIMARY, None)
        else:
            target = self.classified(ctx, session, router)
        ctx.decide().target = target
        return StageResult.CONTINUE

    @staticmethod
    def classified(ctx, session, router):
        """Where the text's own classification sends it: reads to a standby, the rest to the primary."""
        router.ensure_catalog(session.identity.database, session.slot.pool)
        kind = router.classifier.classify(ctx.sql, session.identity.database, ctx.skeleton)
        return (STANDBY if kind in (READ, BEGIN_READ_ONLY) else PRIMARY, None)

    @staticmethod
    def session_command(ctx, session, sql):
        """SHOW helios.write_lsn / SET helios.read_after, answered by the proxy."""
        if SHOW_WRITE_LSN.match(sql):
            value = session.route.ryw_lsn
            text = f"{value >> 32:X}/{value & 0xFFFFFFFF:X}" if value else ""
            return StageResult.respond(codec.text_result("helios.write_lsn", text, "SHOW"))
        token = SET_READ_AFTER.match(sql)
        if token:
            if not LSN_TEXT.match(token.group(1)):
                return StageResult.reject(INVALID_PARAMETER_VALUE, f"invalid value for helios.read_after: "
                                          f"{token.group(1)!r} (expected an LSN from SHOW helios.write_lsn)")
            wanted = lsn(token.group(1))
            ctx.decide().read_after = wanted
            return StageResult.respond(codec.message(b"C", b"SET\0"))
        return None
