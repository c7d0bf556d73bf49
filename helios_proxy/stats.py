"""Traffic counters for the admin API and Prometheus, kept off the hot path: each session counts
into a Counters of its own (queries, transactions, bytes, wait time: `session.counters`), and these
totals collect what closed sessions counted. A scrape adds the live sessions to them."""
import time
from bisect import bisect_right
from collections import deque

from .periodic import Periodic

COUNTERS = ("queries", "transactions", "bytes_in", "bytes_out", "wait_seconds", "fast_hits", "fast_misses",
            "fast_queued")


class Counters:
    """One session's counts: the forwarder counts queries and bytes in, the relay transactions and
    bytes out, the session its waits for a server connection."""
    __slots__ = COUNTERS + ("wait_started",)

    def __init__(self):
        self.queries = self.transactions = self.bytes_in = self.bytes_out = 0
        self.fast_hits = self.fast_misses = 0  # requests the fast path took, and handed on (frontend/fastpath.py)
        self.fast_queued = 0  # those it had wait in their pool's line
        self.wait_seconds = 0.0
        self.wait_started = None  # when the current wait for a server began, while waiting

    def queued(self):
        """A request of the fast path waits in its pool's line (frontend/fastpath_waits.py)."""
        self.fast_queued += 1

    def waited(self, since):
        """A wait for a server connection that began at since (time.monotonic()) ended."""
        self.wait_seconds += time.monotonic() - since


# Transaction (lease) durations, seconds: the buckets of the latency histogram.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Stats:
    def __init__(self):
        self.closed = {}              # database -> {counter: total} of sessions that ended
        self._histogram = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        # Durations not added up yet: a lease's end appends its own (a list's append, not a Python
        # call per transaction); they are added up every 2 s (StatsSampler) and before a read.
        self.took = []
        self.history = deque(maxlen=180)  # (unix time, queries so far, transactions so far)
        self.started = time.time()

    def session_closed(self, session):
        totals = self.closed.setdefault(session.identity.database, dict.fromkeys(COUNTERS, 0))
        for name in COUNTERS:
            totals[name] += getattr(session.counters, name)

    def add_up(self):
        """The durations appended to `took` (pooled modes: from lease to release), into the histogram."""
        took, self.took = self.took, []
        if not took:
            return
        # Sorted (a C sort of floats: ~15 comparisons each), each bucket's count is where its bound
        # falls: a third of the instructions of finding each duration's bucket.
        took.sort()
        histogram, below = self._histogram, 0
        for bucket, bound in enumerate(BUCKETS):  # (bucket: the durations over the bound before, up to its own)
            upto = bisect_right(took, bound, below)
            histogram[bucket] += upto - below
            below = upto
        histogram[-1] += len(took) - below
        self._sum += sum(took)

    @property
    def histogram(self):
        """Transactions per latency bucket (BUCKETS; the last: longer)."""
        self.add_up()
        return self._histogram

    @property
    def latency_sum(self):
        self.add_up()
        return self._sum

    def by_database(self, sessions):
        """{database: {counter: total}} over closed and live sessions."""
        out = {db: dict(totals) for db, totals in self.closed.items()}
        for session in sessions:
            if session.identity.database is None:
                continue
            totals = out.setdefault(session.identity.database, dict.fromkeys(COUNTERS, 0))
            for name in COUNTERS:
                totals[name] += getattr(session.counters, name)
        return out

    def sample(self, sessions):
        """Remember the running totals now (the status page's chart of queries per second)."""
        totals = self.by_database(sessions).values()
        self.history.append((round(time.time(), 1), sum(t["queries"] for t in totals),
                             sum(t["transactions"] for t in totals)))


class StatsSampler(Periodic):
    """Samples the totals every 2 s for the status page's chart (and adds up what waits to be)."""

    def __init__(self, proxy):
        self.proxy = proxy

    def interval(self):
        return 2.0

    def tick(self):
        self.proxy.stats.add_up()
        self.proxy.router.counts()  # (the leases' counts too: their lists stay short)
        self.proxy.stats.sample(self.proxy.sessions)
