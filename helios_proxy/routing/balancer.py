"""Choosing a node for a read among the candidates: five strategies, as the spec lists them.

Candidates come already filtered (healthy, enabled, within lag limits); weights come from
`[[nodes]] weight`. Active leases and an EWMA of lease latency per node are kept here too.
"""
import itertools
import random

STRATEGIES = ("round_robin", "weighted", "random", "least_connections", "latency")


class Balancer:
    def __init__(self, strategy="round_robin", rng=None):
        if strategy not in STRATEGIES:
            raise ValueError(strategy)
        self.strategy = strategy
        self.rng = rng or random.Random()
        self._counter = itertools.count()
        self.current = {}   # smooth weighted round robin state: node name -> current weight
        self.active = {}    # node name -> leases in progress
        self.latency = {}   # node name -> EWMA of seconds per lease

    def choose(self, nodes):
        """One of nodes (each with .name and .weight), or None if there is none to choose."""
        nodes = [n for n in nodes if n.weight > 0] or list(nodes)
        if not nodes:
            return None
        return getattr(self, "_" + self.strategy)(nodes)

    def _round_robin(self, nodes):
        return nodes[next(self._counter) % len(nodes)]

    def _weighted(self, nodes):
        # Smooth weighted round robin (as nginx): exact shares, well interleaved.
        total = sum(n.weight for n in nodes)
        best = None
        for n in nodes:
            self.current[n.name] = self.current.get(n.name, 0) + n.weight
            if best is None or self.current[n.name] > self.current[best.name]:
                best = n
        self.current[best.name] -= total
        return best

    def _random(self, nodes):
        return self.rng.choices(nodes, weights=[n.weight for n in nodes])[0]

    def _least_connections(self, nodes):
        return min(nodes, key=lambda n: (self.active.get(n.name, 0) / max(n.weight, 1), n.name))

    def _latency(self, nodes):
        return min(nodes, key=lambda n: (self.latency.get(n.name, 0.0), self.active.get(n.name, 0)))

    # --- bookkeeping from the sessions ------------------------------------------------------------
    def started(self, node):
        self.active[node.name] = self.active.get(node.name, 0) + 1

    def finished(self, node, seconds, alpha=0.2):
        self.active[node.name] = max(0, self.active.get(node.name, 0) - 1)
        old = self.latency.get(node.name)
        self.latency[node.name] = seconds if old is None else (1 - alpha) * old + alpha * seconds
