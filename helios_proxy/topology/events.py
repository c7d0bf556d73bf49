"""Topology events, broadcast by the primary tracker (tracker.py) to its subscribers: the router,
the failover controller and the switchover buffer (and plugins' on_topology_change)."""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class PrimaryChanged:
    """The primary, or its state, changed: `new` is None while there is none (failover pending)."""
    old: Optional[str]
    new: Optional[str]
    state: str   # PENDING | CONFIRMED | NONE (tracker.py)


@dataclass(frozen=True)
class NodeLeft:
    """A node stopped taking traffic: fenced by a switchover or the operator, or a stale primary."""
    node: str
    reason: str


@dataclass(frozen=True)
class HealthChanged:
    node: str
    healthy: bool
