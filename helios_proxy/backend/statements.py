"""The prepared statements one server connection holds, and when they went stale.

A server connection's statements are named by the proxy (pool/prepared.py translates client names
into them); `ServerStatements` remembers which it has, least recently used first, under the cap.
Statements are shared by every client of a pool, so a plan PostgreSQL refused after a schema
change is stale on every connection: a generation per name (and one for all) says so.
"""
from collections import OrderedDict

# Shared statements whose plans PostgreSQL refused after a schema change ("cached plan must not
# change result type", "cache lookup failed for type"): server name -> generation. A server
# connection that parsed a name before its latest generation holds a stale copy; it is closed and
# parsed again (invisibly) the next time a client needs it there, on every connection of every pool.
GENERATIONS = {}
EVERY = [0]  # bumped by a schema change through the proxy: every statement is stale
STALE_PLAN_ERRORS = ((b"C0A000\0", b"cached plan must not change result type"),
                     (b"CXX000\0", b"cache lookup failed for type"))


def stale_plan(error_body):
    """Whether a server's ErrorResponse says a prepared statement's plan went stale."""
    return any(code in error_body and text in error_body for code, text in STALE_PLAN_ERRORS)


def invalidate(names):
    for name in names:
        GENERATIONS[name] = GENERATIONS.get(name, 0) + 1


def invalidate_all():
    EVERY[0] += 1


def generation(name):
    return EVERY[0], GENERATIONS.get(name, 0)


class ServerStatements:
    """The statements one server connection has (name -> generation parsed), least recently used first."""

    def __init__(self, cap):
        self.names = OrderedDict()
        self.cap = cap

    def __contains__(self, name):
        """Whether the server has name, parsed since its last invalidation."""
        if self.names.get(name) == (EVERY[0], GENERATIONS.get(name, 0)):  # (generation(name), inline)
            self.names.move_to_end(name)
            return True
        return False

    def add(self, name):
        """Record name; return the names to close first (the caller closes them): a stale copy of
        name itself, and those evicted to stay under the cap."""
        evicted = [name] if name in self.names else []
        self.names[name] = generation(name)
        self.names.move_to_end(name)
        while len(self.names) > self.cap:
            evicted.append(self.names.popitem(last=False)[0])
        return evicted

    def discard(self, name):
        self.names.pop(name, None)

    def clear(self):
        self.names.clear()
