"""Admission: every execution a client asks for passes the [[limits]] and its tenant's `qps`, whatever
the protocol: each statement of a simple Query (the rate-limit stage), each Execute and FunctionCall
of the extended protocol (the forwarder, frontend/forward.py), so a prepared statement run a thousand
times counts a thousand times. A Parse runs nothing and is not counted.

A concurrency slot is taken once per (limit, key) while the session's requests are in flight: the
Executes of one pipelined batch run one after another on its server, so they are one query running.
"""
from functools import lru_cache

from pglast.parser import split

from ..errors import CONFIGURATION_LIMIT_EXCEEDED, ProxyError
from . import Exceeded


@lru_cache(maxsize=4096)
def statements_in(sql):
    """How many statements a simple Query runs (PostgreSQL's own scanner; at least one)."""
    try:
        return max(1, len(split(sql, with_parser=False, only_slices=True)))
    except Exception:  # noqa: BLE001 - a text the scanner rejects runs (and fails) as one
        return 1


class Texts:
    """A session's statement and portal texts, kept only while a limit is keyed by fingerprint:
    an Execute names a portal, the portal was bound from a statement, the statement parsed a text."""
    __slots__ = ("statements", "portals")

    def __init__(self):
        self.statements, self.portals = {}, {}

    def parsed(self, name, sql):
        self.statements[name] = sql

    def bound(self, portal, statement):
        self.portals[portal] = self.statements.get(statement)

    def executed(self, portal):
        return self.portals.get(portal)


class Admission:
    """Built with the proxy; reads the limiter and the tenants of the moment (reloads change them)."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.configure()

    def configure(self):
        """After the limiter or the tenants changed (start, reload): whether anything counts
        executions now (else the forwarder passes Execute as it comes, at no cost), and whether a
        limit needs the statements' texts."""
        proxy = self.proxy
        self.on = bool(proxy.limiter.limits) or proxy.tenants is not None
        self.by_text = proxy.limiter.by_text

    def take(self, session, count, sql):
        """Count count executions of sql for session; None when admitted, else the ErrorResponse
        fields (sqlstate, message) refusing them."""
        proxy = self.proxy
        tenant = session.identity.tenant
        if tenant is not None and tenant.cfg.qps:
            try:
                proxy.tenants.take_qps(tenant, count)
            except Exceeded as e:
                tenant.rejected += 1
                return CONFIGURATION_LIMIT_EXCEEDED, str(e)
        limiter = proxy.limiter
        if not limiter.limits:
            return None
        try:
            held = limiter.take(session, sql, count, session.limits_held, session.slot.wait_on)
        except Exceeded as e:
            return CONFIGURATION_LIMIT_EXCEEDED, str(e)
        except ProxyError as e:  # (its client canceled it while it waited: 57014)
            return e.sqlstate, e.message
        if held:  # (given back when the server, or the proxy, has answered all it owes: limits.release)
            session.limits_held.extend(held)
        return None
