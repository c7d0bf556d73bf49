"""Replication lag of each standby, polled in the background: replay position against the primary's
WAL position (bytes) and the replay delay (ms, zero when the standby has replayed all it received).
A standby beyond `routing.max_lag_bytes` or `max_lag_ms` gets no reads (router.read_nodes).

The monitor has its own connection to every node (the health probe's user and database), so a busy
pool never hides a standby's lag. With a lag limit set, a standby whose lag is unknown (never
measured, or not measured in the last few intervals) is not fit for reads either.
"""
import logging
import time

from gevent.lock import Semaphore

from ..backend.connection import ServerConnection
from ..errors import ProxyError
from ..periodic import Periodic
from ..lsn import lsn
from .tables import COLD_LAG

log = logging.getLogger(__name__)
STANDBY_QUERY = ("SELECT pg_catalog.pg_last_wal_replay_lsn(), CASE WHEN pg_catalog.pg_last_wal_receive_lsn() "
                 "= pg_catalog.pg_last_wal_replay_lsn() THEN 0 ELSE COALESCE(1000 * extract(epoch FROM "
                 "now() - pg_catalog.pg_last_xact_replay_timestamp()), 0) END")
PRIMARY_QUERY = "SELECT pg_catalog.pg_current_wal_lsn()"
APPLICATION_NAME = "helios-lag"
STALE_AFTER = 3  # lag not measured for this many intervals (plus the health timeout) is unknown


class LagMonitor(Periodic):
    def __init__(self, router):
        self.router = router
        self.lag = {}       # standby name -> (lag bytes, lag ms)
        self.measured = {}  # standby name -> monotonic time of its last measurement
        self.conns = {}     # node name -> ServerConnection of the monitor's own
        self.lock = Semaphore()

    def interval(self):
        return self.router.config.routing.lag_check_interval

    def _query(self, node, sql):
        """sql's first row on node over the monitor's own connection; None when node cannot answer."""
        cfg = self.router.config
        conn = self.conns.get(node.name)
        try:
            if conn is None or conn.broken:
                health = self.router.health
                conn = ServerConnection(node, cfg.health.database, health.credentials(), cfg)
                conn.connect({"application_name": APPLICATION_NAME}, connect_timeout=cfg.health.timeout)
                self.conns[node.name] = conn
            return conn.execute(sql)[0]
        except (ProxyError, OSError) as e:  # a node that is down: its health says so, not us
            log.debug("lag check on %s failed: %s", node.name, e)
            self.conns.pop(node.name, None)
            if conn is not None:
                conn.close()
            return None

    def tick(self):
        """Measure every standby once (also called at once when a node turns healthy again)."""
        with self.lock:  # one measurement at a time: they share the connections
            self._measure()

    def _measure(self):
        if self.router.health is None:
            return
        node = self.router.primary()
        primary = self._query(node, PRIMARY_QUERY) if node is not None else None
        head = lsn(primary[0]) if primary else None
        health, tracker = self.router.health, self.router.tracker
        # every standby, fenced ones too: one enabled again is fit for reads at once
        for node in (n for n in tracker.config.nodes if tracker.roles.get(n.name, n.role) == "standby"):
            if not health.healthy(node):
                continue
            row = self._query(node, STANDBY_QUERY)
            if row is None or row[0] is None or head is None:
                continue  # unknown: it ages out of `measured`
            replayed = lsn(row[0])
            self.router.replayed[node.name] = max(replayed, self.router.replayed.get(node.name, -1))
            self.lag[node.name] = (max(0, head - replayed), float(row[1] or 0))
            self.measured[node.name] = time.monotonic()

    def too_far(self, node, lag=None):
        """Whether node is beyond a lag limit, or its lag is unknown while a limit is set. lag: a
        read's own requirement (routing/tables.py): COLD_LAG, or a max_lag_ms for hot tables."""
        cfg = self.router.config
        r = cfg.routing
        max_bytes, max_ms = r.max_lag_bytes, r.max_lag_ms
        if lag is COLD_LAG:
            max_bytes, max_ms = 0, r.cold_max_lag_ms
        elif lag is not None:
            max_ms = lag
        if not (max_bytes or max_ms):
            return False
        measured = self.measured.get(node.name)
        if measured is None or time.monotonic() - measured > (STALE_AFTER * self.interval()
                                                                + cfg.health.timeout):
            return True
        behind, delay = self.lag[node.name]
        return bool((max_bytes and behind > max_bytes) or (max_ms and delay > max_ms))

    def stop(self):
        super().stop()
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()
