"""Timeouts PgBouncer users expect, watched from outside the sessions: `pool.query_timeout` (a
request the server has not answered for that long, e.g. on a hung server) and
`pool.idle_transaction_timeout` (a client idle inside a transaction, holding its server).

A watcher samples every session a few times per timeout instead of timing each query, so the hot
path pays nothing: a session whose request counters have not moved since the last change has been
waiting (or idle) at least that long. Either timeout ends the session with a FATAL, as PgBouncer
does: the server connection of a timed-out query is canceled and closed, an idle transaction is
rolled back before its connection is reused.
"""
import logging
import time

import gevent

from ..errors import IDLE_IN_TRANSACTION_TIMEOUT, QUERY_CANCELED
from ..periodic import Periodic
from ..protocol import messages as m

log = logging.getLogger(__name__)
IN_TRANSACTION = (m.TX_IN_BLOCK, m.TX_FAILED)


class SessionTimeouts(Periodic):
    def __init__(self, proxy):
        self.proxy = proxy
        self.seen = {}  # session -> (what it was doing, monotonic time that began)

    def interval(self):
        cfg = self.proxy.config.pool
        shortest = min(t for t in (cfg.query_timeout, cfg.idle_transaction_timeout, 4.0) if t)
        return max(0.01, shortest / 4)

    def tick(self):
        cfg, now = self.proxy.config.pool, time.monotonic()
        if not (cfg.query_timeout or cfg.idle_transaction_timeout):  # both off (reload may turn them on)
            self.seen = {}
            return
        seen = {}
        for session in list(self.proxy.sessions):
            server = session.server
            state = (session.counters.queries, session.counters.transactions, session.plan.outstanding > 0,
                     server.tx_status if server is not None else None)
            previous = self.seen.get(session)
            since = previous[1] if previous is not None and previous[0] == state else now
            seen[session] = (state, since)
            if session.closing is not None or server is None:
                continue
            took = now - since
            if session.plan.outstanding > 0 and cfg.query_timeout and took > cfg.query_timeout:
                self._end(session, f"canceling statement due to query timeout (pool.query_timeout = "
                                   f"{cfg.query_timeout:g} s)", QUERY_CANCELED)
            elif (session.plan.outstanding == 0 and cfg.idle_transaction_timeout and server.tx_status in IN_TRANSACTION
                  and took > cfg.idle_transaction_timeout):
                self._end(session, "terminating connection due to idle-in-transaction timeout "
                                   f"(pool.idle_transaction_timeout = {cfg.idle_transaction_timeout:g} s)",
                          IDLE_IN_TRANSACTION_TIMEOUT)
        self.seen = seen

    @staticmethod
    def _end(session, message, sqlstate):
        log.warning("%r: %s", session, message)
        session.close_for(message)
        gevent.spawn(session.terminate, message, sqlstate)  # a client not reading must not block us
