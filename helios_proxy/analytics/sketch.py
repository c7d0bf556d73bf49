"""Latency quantiles in bounded memory: a log-bucketed histogram (the DDSketch idea). A duration d
falls in bucket ceil(log(d) / log(GAMMA)); every value in a bucket is within +-1 % of the bucket's
middle, which is what a quantile reports. Buckets exist only where values fell: a query shape's
latencies spread over a few dozen, at most ~1,700 (1 us to 1 day).

(The `ddsketch` package does the same with a protobuf dependency; these twenty lines are the
part we need.)
"""
import collections
import itertools
import math
from operator import mul

GAMMA = 1.02                 # neighbouring bucket bounds differ by 2 %: +-1 % relative error
LOG_GAMMA = math.log(GAMMA)
FLOOR_S = 1e-6               # durations below 1 us count as 1 us
PER_BUCKET = 1.0 / LOG_GAMMA
PER_BUCKETS = itertools.repeat(PER_BUCKET)


class Sketch:
    __slots__ = ("buckets", "count")

    def __init__(self):
        self.buckets = {}
        self.count = 0

    def add(self, seconds):
        self.add_all((seconds,))

    def add_all(self, seconds):
        """Each of a list of durations (the same buckets as add, in a tighter loop)."""
        buckets = self.buckets
        # int() is ceil for the logarithms of durations under 1 s (negative): counted by C loops;
        # durations of 1 s or more (rare) one by one.
        under = [x for x in seconds if x < 1.0] if max(seconds) >= 1.0 else seconds
        if under and min(under) < FLOOR_S:
            under = [x if x > FLOOR_S else FLOOR_S for x in under]
        for i, n in collections.Counter(map(int, map(mul, map(math.log, under), PER_BUCKETS))).items():
            buckets[i] = buckets.get(i, 0) + n
        if under is not seconds:
            for x in seconds:
                if x >= 1.0:
                    i = math.ceil(math.log(x) * PER_BUCKET)
                    buckets[i] = buckets.get(i, 0) + 1
        self.count += len(seconds)

    def merge(self, other):
        for i, n in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + n
        self.count += other.count

    def quantile(self, q):
        """The q-quantile (0..1) in seconds, None when empty."""
        if not self.count:
            return None
        rank = q * (self.count - 1)
        seen = 0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen > rank:
                return 2 * GAMMA ** i / (GAMMA + 1)  # the middle of (GAMMA^(i-1), GAMMA^i]
        return 2 * GAMMA ** max(self.buckets) / (GAMMA + 1)
