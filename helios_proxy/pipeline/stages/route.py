"""Read/write splitting: decides where the next lease goes (transaction and statement pooling).

Only the first query of a transaction decides: inside a lease everything follows it. Order of
precedence: a /*+ route=... */ or /*+ node=... */ hint, the session's SET helios.route, then the
classification (routing/classify.py). A pinned session stays on the primary.
"""
import re

from ...errors import ProxyError
from ...protocol import codec
from ...routing.classify import BEGIN_READ_ONLY, READ
from ...routing.hints import INVALID_PARAMETER_VALUE, parse_hints
from ...routing.router import PRIMARY, STANDBY, Router
from ..stage import Stage, StageResult

SET_ROUTE = re.compile(r"^\s*set\s+(?:session\s+)?helios\.route\s*(?:=|to)\s*'?(\w+)'?\s*;?\s*$", re.I)
ROUTE_VALUES = {"primary": PRIMARY, "standby": STANDBY, "auto": None, "default": None}


class Route(Stage):
    name = "route"

    @classmethod
    def enabled(cls, config):
        return Router.active(config)

    def process(self, ctx):
        session = ctx.session
        if not session.pooled:
            return StageResult.CONTINUE
        router = session.proxy.router
        sql = ctx.sql
        override = SET_ROUTE.match(sql)
        if override:
            value = override.group(1).lower()
            if value not in ROUTE_VALUES:
                return StageResult.reject(INVALID_PARAMETER_VALUE, f"invalid value for helios.route: {value!r}")
            session.route_override = ROUTE_VALUES[value]
            return StageResult.respond(codec.message(b"C", b"SET\0"))
        if session.server is not None:  # inside a transaction (or pinned): the lease decided already
            return StageResult.CONTINUE
        try:
            hints = parse_hints(sql, {n.name for n in self.config.nodes}) if "/*+" in sql else {}
        except ProxyError as e:
            return StageResult.reject(e.sqlstate, e.message)
        if "node" in hints:
            target = (STANDBY if router.node(hints["node"]).role == STANDBY else PRIMARY, hints["node"])
        elif hints.get("route") in (PRIMARY, STANDBY):
            target = (hints["route"], None)
        elif session.pinned:
            target = (PRIMARY, None)
        elif session.route_override:
            target = (session.route_override, None)
        else:
            router.ensure_catalog(session)
            kind = router.classifier.classify(sql, session.database)
            target = (STANDBY if kind in (READ, BEGIN_READ_ONLY) else PRIMARY, None)
        session.next_target = target
        return StageResult.CONTINUE
