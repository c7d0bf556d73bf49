"""Replication lag of each standby, polled in the background: replay position against the primary's
WAL position (bytes) and the replay delay (ms, zero when the standby has replayed all it received).
A standby beyond `routing.max_lag_bytes` or `max_lag_ms` gets no reads (router.read_nodes).

The monitor borrows an idle connection from any pool of the node, so it needs no credentials of its
own; a node no client has used yet is not measured (and not excluded).
"""
import logging

from ..errors import ProxyError
from ..periodic import Periodic
from ..lsn import lsn

log = logging.getLogger(__name__)
STANDBY_QUERY = ("SELECT pg_catalog.pg_last_wal_replay_lsn(), CASE WHEN pg_catalog.pg_last_wal_receive_lsn() "
                 "= pg_catalog.pg_last_wal_replay_lsn() THEN 0 ELSE COALESCE(1000 * extract(epoch FROM "
                 "now() - pg_catalog.pg_last_xact_replay_timestamp()), 0) END")
PRIMARY_QUERY = "SELECT pg_catalog.pg_current_wal_lsn()"


class LagMonitor(Periodic):
    def __init__(self, router, pools):
        self.router = router
        self.pools = pools
        self.lag = {}   # standby name -> (lag bytes, lag ms)

    def interval(self):
        return self.router.config.routing.lag_check_interval

    def _query(self, node, sql):
        """sql's first row on node, through an idle connection of one of its pools; None if none."""
        for pool in list(self.pools.pools.values()):
            if pool.node.name != node.name:
                continue
            conn, ok = None, False
            try:
                conn = pool.try_acquire()
                if conn is None:
                    continue
                rows = conn.execute(sql)
                ok = True
                return rows[0]
            except (ProxyError, OSError) as e:  # a node that is down: its health says so, not us
                log.debug("lag check on %s failed: %s", node.name, e)
                return None
            finally:
                if conn is not None:
                    pool.release(conn, reusable=ok)
        return None

    def tick(self):
        node = self.router.primary()
        primary = self._query(node, PRIMARY_QUERY) if node is not None else None
        head = lsn(primary[0]) if primary else None
        health = self.router.health
        for node in self.router.standbys():
            if health is not None and not health.healthy(node):
                continue
            row = self._query(node, STANDBY_QUERY)
            if row is None or row[0] is None:
                continue
            replayed = lsn(row[0])
            self.router.replayed[node.name] = max(replayed, self.router.replayed.get(node.name, -1))
            behind = max(0, head - replayed) if head is not None else 0
            self.lag[node.name] = (behind, float(row[1] or 0))

    def too_far(self, node):
        cfg = self.router.config.routing
        behind, delay = self.lag.get(node.name, (0, 0.0))
        return bool((cfg.max_lag_bytes and behind > cfg.max_lag_bytes) or (cfg.max_lag_ms and delay > cfg.max_lag_ms))
