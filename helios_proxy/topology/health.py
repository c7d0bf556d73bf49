"""Periodic health probes of every node: connect, log in and run a cheap query, with a timeout.

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

log = logging.getLogger(__name__)
PROBE = "SELECT pg_catalog.pg_is_in_recovery()"
APPLICATION_NAME = "helios-health"  # how the probes show in pg_stat_activity


class NodeHealth:
    __slots__ = ("healthy", "failures", "successes", "in_recovery", "error", "checked")

    def __init__(self):
        self.healthy = True
        self.failures = self.successes = 0
        self.in_recovery = None
        self.error = None
        self.checked = None


class HealthChecker(Periodic):
    def __init__(self, config, users, on_change=None):
        self.config = config
        self.users = users          # users_file secrets, for the probe user's password
        self.on_change = on_change  # callable(node, healthy) at every transition
        self.nodes = {}             # name -> NodeHealth

    def state(self, node):
        return self.nodes.setdefault(node.name, NodeHealth())

    def healthy(self, node):
        state = self.nodes.get(node.name)
        return state is None or state.healthy

    def interval(self):
        return self.config.health.interval

    def tick(self):
        probes = [gevent.spawn(self.probe, node) for node in self.config.nodes]
        gevent.joinall(probes, timeout=self.config.health.timeout + 1)

    def _credentials(self):
        cfg = self.config.health
        secret = cfg.password or self.users.get(cfg.user)
        return Credentials.from_secret(cfg.user, secret)

    def probe(self, node):
        """One probe of node; updates its state."""
        cfg = self.config
        conn = ServerConnection(node, cfg.health.database, self._credentials(), cfg)
        try:
            with gevent.Timeout(cfg.health.timeout, TimeoutError(f"no answer in {cfg.health.timeout:g} s")):
                conn.connect({"application_name": APPLICATION_NAME}, connect_timeout=cfg.health.timeout)
                in_recovery = conn.execute(PROBE)[0][0] == "t"
        except ProxyError as e:
            if e.sqlstate in (INVALID_PASSWORD, INVALID_AUTHORIZATION):
                log.warning("health probe of %s cannot log in as %r: %s (check [health])", node.name,
                            cfg.health.user, e.message)
                return
            self.failed(node, e.message)
        except (OSError, TimeoutError) as e:
            self.failed(node, str(e) or type(e).__name__)
        else:
            self._succeeded(node, in_recovery)
        finally:
            conn.close()

    def _succeeded(self, node, in_recovery):
        state = self.state(node)
        state.failures, state.successes = 0, state.successes + 1
        state.in_recovery, state.error, state.checked = in_recovery, None, time.monotonic()
        if not state.healthy and state.successes >= self.config.health.success_threshold:
            state.healthy = True
            log.warning("node %s is healthy again", node.name)
            self._changed(node, True)

    def failed(self, node, reason, at_once=False):
        """A failed probe, or (at_once) a failed client connection attempt."""
        state = self.state(node)
        state.successes, state.failures = 0, state.failures + 1
        state.error, state.checked = reason, time.monotonic()
        if state.healthy and (at_once or state.failures >= self.config.health.failure_threshold):
            state.healthy = False
            log.warning("node %s is unhealthy: %s", node.name, reason)
            self._changed(node, False)

    def _changed(self, node, healthy):
        if self.on_change is not None:
            try:
                self.on_change(node, healthy)
            except Exception:
                log.exception("reacting to the health of %s failed", node.name)
