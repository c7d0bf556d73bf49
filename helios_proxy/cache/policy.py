"""DistribCache's workload classes and admission by cost: what kind of read a query shape is, and
what its record of lookups, hits and miss times says about caching it (cache/__init__.py asks)."""

CLASSES = ("point", "range", "analytic", "vector")
# Admission by observed cost (per query shape): after ONE_HIT_CALLS lookups with under 1 % hits, only
# one read in ONE_HIT_PROBE goes through the cache; a shape whose misses take EXPENSIVE_S or more on
# average is kept in both tiers for twice its TTL.
ONE_HIT_CALLS, ONE_HIT_PROBE, EXPENSIVE_S = 500, 50, 0.02
DECAY_AFTER = 1000  # a shape's counts are halved at this many lookups
POPULAR_AFTER = 100  # lookups after which a shape under 50 % hits stays on standbys when it misses


def workload_class(shape):
    """DistribCache's workload class of a read, from its parse tree."""
    f = shape.features
    if "vector" in f:
        return "vector"
    if f & {"agg", "group", "window"}:
        return "analytic"
    if "where" in f and "range" not in f and len(shape.reads) <= 1:
        return "point"
    return "range"


class Admission:
    """A read shape the cache may serve: everything about it that depends neither on the session
    nor on the constants (one per template and hint; `template` and `fingerprint` are the shape's)."""
    __slots__ = ("template", "fingerprint", "names", "sorted_names", "ttl", "cls", "tiers", "catalog")

    def __init__(self, shape, names, ttl, cls, tiers, catalog):
        self.template, self.fingerprint = shape.template, shape.fingerprint
        self.names, self.ttl, self.cls, self.tiers, self.catalog = names, ttl, cls, tiers, catalog
        self.sorted_names = sorted(names)


class ClassStats:
    """One query shape's record: lookups, hits, misses and their time (halved every DECAY_AFTER
    lookups, so that the recent past counts)."""
    __slots__ = ("fingerprint", "cls", "calls", "hits", "misses", "miss_seconds", "skipped")

    def __init__(self, fingerprint, cls):
        self.fingerprint, self.cls = fingerprint, cls
        self.calls = self.hits = self.misses = self.skipped = 0
        self.miss_seconds = 0.0

    def skip_now(self):
        """Whether a read of this shape skips the cache now: its answers are (almost) never asked
        again; one read in ONE_HIT_PROBE still goes through it, to notice if that changes."""
        if self.calls < ONE_HIT_CALLS or self.hits * 100 >= self.calls:
            return False
        self.skipped += 1
        return self.skipped % ONE_HIT_PROBE != 0
