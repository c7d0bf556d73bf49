"""Periodic health probes of every node: connect, log in and run a cheap query, with a timeout.

The probe's connection stays open for the next probe while it answers (a connection per probe
would cost each node a backend's start every health.interval, per proxy: Patroni and the lag
monitor keep theirs too); a probe that fails closes it, and the next one connects anew, so a node
that does not take connections fails its probes as before. A probe because a client saw the node
fail (`suspect`) always connects anew: it asks whether clients can reach the node at all.

A node turns unhealthy after `health.failure_threshold` failed probes in a row (or at once when a
client's connection attempt to it fails) and healthy again after `health.success_threshold`
successes. Unhealthy nodes get no reads (routing/router.py). Probes run in their own greenlets and
never hold up client traffic. A probe that cannot log in (wrong health credentials) says so in the
log and leaves the node's health as it was: a configuration error is not an outage.
"""
import logging
import time

import gevent

from ..backend.connection import ServerConnection
from ..backend.credentials import Credentials
from ..errors import INVALID_AUTHORIZATION, INVALID_PASSWORD, ProxyError
from ..periodic import Periodic
from ..lsn import lsn

log = logging.getLogger(__name__)
# One round trip: role, WAL position (received on a standby, written on a primary), the primary's
# timeline (from its current WAL file name) and which standbys it streams to, synchronously or not.
PROBE = ("SELECT r, CASE WHEN r THEN COALESCE(pg_catalog.pg_last_wal_receive_lsn(), "
         "pg_catalog.pg_last_wal_replay_lsn()) ELSE pg_catalog.pg_current_wal_lsn() END, "
         "CASE WHEN r THEN NULL ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END, "
         "CASE WHEN r THEN NULL ELSE (SELECT pg_catalog.string_agg(application_name || ':' || "
         "COALESCE(sync_state, '?'), ',') FROM pg_catalog.pg_stat_replication) END "
         "FROM pg_catalog.pg_is_in_recovery() r")
APPLICATION_NAME = "helios-health"  # how the probes show in pg_stat_activity


class NodeHealth:
    __slots__ = ("healthy", "failures", "successes", "in_recovery", "lsn", "error", "checked", "suspect", "conn",
                 "conn_for")

    def __init__(self):
        self.healthy = True
        self.failures = self.successes = 0
        self.in_recovery = None
        self.lsn = None       # last WAL position seen (received on a standby, written on a primary)
        self.error = None
        self.checked = None
        self.suspect = None   # the greenlet probing it quickly after a client saw it fail
        self.conn = None      # the last good probe's connection, kept for the next probe
        self.conn_for = None  # where it went and as whom (probe()'s target): a reload may change them


class HealthChecker(Periodic):
    def __init__(self, config, users, on_change=None, on_observe=None):
        self.config = config
        self.users = users            # users_file secrets, for the probe user's password
        self.on_change = on_change    # callable(node, healthy, reason) at every transition
        self.on_observe = on_observe  # callable(node, in_recovery, timeline, lsn) after each good probe
        self.nodes = {}               # name -> NodeHealth
        self.replication = {}         # standby application_name -> sync_state, as the primary last said

    def state(self, node):
        return self.nodes.setdefault(node.name, NodeHealth())

    def healthy(self, node):
        state = self.nodes.get(node.name)
        return state is None or state.healthy

    def interval(self):
        return self.config.health.interval

    def stop(self):
        super().stop()
        for state in self.nodes.values():
            conn, state.conn = state.conn, None
            if conn is not None:
                conn.close()

    def tick(self):
        self.probe_all()

    def probe_all(self):
        """One probe of every node at once; returns when all have answered or timed out."""
        probes = [gevent.spawn(self.probe, node) for node in self.config.nodes]
        gevent.joinall(probes, timeout=self.config.health.timeout + 1)

    def suspect(self, node, reason):
        """A client saw node fail: probe it again at once, and quickly until it is decided."""
        state = self.state(node)
        if not state.healthy or (state.suspect is not None and not state.suspect.dead):
            return
        log.info("node %s suspected down (%s); probing it now", node.name, reason)
        state.suspect = gevent.spawn(self._probe_quickly, node)

    def _probe_quickly(self, node):
        state = self.state(node)
        spacing = min(0.1, self.config.health.interval)
        for _ in range(self.config.health.failure_threshold):
            self.probe(node, fresh=True)
            if not state.healthy or state.failures == 0:
                return
            gevent.sleep(spacing)

    def credentials(self):
        cfg = self.config.health
        secret = cfg.password or self.users.get(cfg.user)
        return Credentials.from_secret(cfg.user, secret)

    def probe(self, node, fresh=False):
        """One probe of node, on the last good probe's connection unless fresh; updates its state.
        A kept connection that fails other than by a timeout (the server closed it while idle, say)
        is not yet the node's failure: the probe connects anew at once."""
        cfg = self.config
        state = self.state(node)
        conn, state.conn = state.conn, None  # (the probe's own: a probe at the same time connects anew)
        target = (node.host, node.port, cfg.health.database, cfg.health.user, cfg.health.password)
        if conn is not None and (fresh or conn.broken or state.conn_for != target):
            conn.close()
            conn = None
        try:
            try:
                row, conn = self._ask(node, conn)
            except (ProxyError, OSError) as e:
                if conn is None or isinstance(e, TimeoutError):
                    raise
                row, conn = self._ask(node, None)
        except ProxyError as e:
            if e.sqlstate in (INVALID_PASSWORD, INVALID_AUTHORIZATION):
                log.warning("health probe of %s cannot log in as %r: %s (check [health])", node.name,
                            cfg.health.user, e.message)
                return
            self.failed(node, e.message)
        except OSError as e:  # (TimeoutError too)
            self.failed(node, str(e) or type(e).__name__)
        else:
            if state.conn is None:  # kept for the next probe
                state.conn, state.conn_for = conn, target
            else:
                conn.close()
            self._succeeded(node, row)

    def _ask(self, node, conn):
        """(The probe's row, the connection it came on) from node, on conn or on a new connection
        (None); the connection is closed when it fails."""
        cfg = self.config
        try:
            with gevent.Timeout(cfg.health.timeout, TimeoutError(f"no answer in {cfg.health.timeout:g} s")):
                if conn is None:
                    conn = ServerConnection(node, cfg.health.database, self.credentials(), cfg)
                    conn.connect({"application_name": APPLICATION_NAME}, connect_timeout=cfg.health.timeout)
                return conn.execute(PROBE)[0], conn
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    def _succeeded(self, node, row):
        in_recovery = row[0] == "t"
        timeline = int(row[2][:8], 16) if row[2] else None
        state = self.state(node)
        state.failures, state.successes = 0, state.successes + 1
        state.in_recovery, state.lsn = in_recovery, lsn(row[1])
        state.error, state.checked = None, time.monotonic()
        if not in_recovery and row[3] is not None:
            self.replication = dict(item.rsplit(":", 1) for item in row[3].split(",") if item)
        if not state.healthy and state.successes >= self.config.health.success_threshold:
            state.healthy = True
            log.warning("node %s is healthy again", node.name)
            self._changed(node, True, None)
        if state.healthy and self.on_observe is not None:
            try:
                self.on_observe(node, in_recovery, timeline, state.lsn)
            except Exception:
                log.exception("reacting to the probe of %s failed", node.name)

    def is_sync(self, node):
        """Whether the primary last reported node as a synchronous standby."""
        return self.replication.get(node.application_name or node.name) in ("sync", "quorum")

    def failed(self, node, reason, at_once=False):
        """A failed probe, or (at_once) a failed client connection attempt."""
        state = self.state(node)
        state.successes, state.failures = 0, state.failures + 1
        state.error, state.checked = reason, time.monotonic()
        if state.healthy and (at_once or state.failures >= self.config.health.failure_threshold):
            state.healthy = False
            log.warning("node %s is unhealthy: %s", node.name, reason)
            self._changed(node, False, reason)

    def _changed(self, node, healthy, reason):
        if self.on_change is not None:
            try:
                self.on_change(node, healthy, reason)
            except Exception:
                log.exception("reacting to the health of %s failed", node.name)
