"""Topology providers (the seed's TopologyProvider): who decides which node is the primary.

Every provider offers `start()`, `stop()`, `subscribe(callback)` (events PrimaryChanged, NodeLeft,
HealthChanged: topology/events.py), `get_primary()` and `get_node(name)`; what it learns it tells
the primary tracker (tracker.py), which the rest of the proxy reads. A provider whose
`confirms_primary` is true finds the primary out itself: the configured one waits for it at start.
`[topology] provider` names one:

- `postgres`: the health probes decide (the tracker follows what they observe);
- `standalone`: only the operator or an external orchestrator (admin API / CLI) sets the primary;
- `patroni`: Patroni decides, watched in its DCS (`dcs_url`, patroni_dcs.py) or polled through its
  REST API (`patroni_url`, patroni.py);
- any other name: a provider a package ships, found through the entry-point group
  `helios_proxy.topology` (a class or factory taking (config, tracker)), or `module:attribute`.
"""
import importlib
import logging
from importlib.metadata import entry_points

from ..errors import ConfigError

log = logging.getLogger(__name__)
GROUP = "helios_proxy.topology"
BUILT_IN = ("postgres", "standalone", "patroni")


class TopologyProvider:
    """The interface, and the behaviour of the two providers that only use the tracker itself."""

    # True: this provider finds out which node is the primary, and the configured one waits for
    # it at start (tracker.expect_confirmation); False: the configuration is the authority.
    confirms_primary = False

    def __init__(self, config, tracker):
        self.config, self.tracker = config, tracker

    def start(self):
        """Begin following the topology (a greenlet of its own, if it needs one)."""

    def stop(self):
        """Stop following it."""

    def subscribe(self, callback):
        """callback(event) for every PrimaryChanged, NodeLeft and HealthChanged."""
        self.tracker.subscribe(callback)

    def get_primary(self):
        """The confirmed primary node, or None."""
        return self.tracker.current()

    def get_node(self, name):
        """The node of that name (its configured role, host and port), or None."""
        return self.tracker.node(name)


class Postgres(TopologyProvider):
    """The health probes decide (the tracker follows their observations: health.py)."""

    confirms_primary = True


class Standalone(TopologyProvider):
    """Only POST /primary or `helios-proxy primary set` moves the primary."""


def load(spec):
    """The provider class (or factory) a name stands for: built-in, entry point, or module:attribute."""
    if spec == "postgres":
        return Postgres
    if spec == "standalone":
        return Standalone
    if spec == "patroni":
        return None  # (built in listener from its settings: patroni_dcs.py or patroni.py)
    for ep in entry_points(group=GROUP):
        if ep.name == spec:
            return ep.load()
    if ":" in spec:
        module, _, attribute = spec.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"topology.provider: {spec!r} does not load: {e}") from None
    raise ConfigError(f"topology.provider: {spec!r} is none of {', '.join(BUILT_IN)}, no installed package "
                      f"offers it (entry-point group {GROUP}), and it is not module:attribute")


def build(config, tracker, health=None, buffer=None):
    """The configured provider, made with (config, tracker); wraps a third party's in the interface
    when it lacks a method. (health, buffer: the built-in Patroni DCS provider probes a new leader
    and holds new transactions during Patroni's switchovers.)"""
    spec = config.topology.provider
    if spec == "patroni":
        from .patroni import PatroniProvider
        from .patroni_dcs import PatroniDcsProvider
        made = (PatroniDcsProvider(config, tracker, health, buffer) if config.topology.dcs_url
                else PatroniProvider(config, tracker, health))
    else:
        made = load(spec)(config, tracker)
    for method in ("start", "stop", "subscribe", "get_primary", "get_node"):
        if not hasattr(made, method):
            setattr(made, method, getattr(TopologyProvider(config, tracker), method))
    if not hasattr(made, "confirms_primary"):  # (a package's provider: its configuration is trusted)
        made.confirms_primary = TopologyProvider.confirms_primary
    if spec not in BUILT_IN:
        log.warning("topology provider %s (a package's) decides the primary", spec)
    return made
