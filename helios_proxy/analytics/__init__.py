"""Query analytics (`[analytics] enabled = true`): what pg_stat_statements tells about the server,
seen from the proxy, per query shape.

A query's shape is pglast's fingerprint (one for all literal values and parameters, both
protocols, any spacing). The analytics stage (pipeline/stages/analytics.py) finds the Stat of a
query's fingerprint and stamps the query's start; the response path (server/relay.py) records
its end at the ReadyForQuery: time from the client's query to the server's completion, rows from
the command tag, the SQLSTATE of an error, the node that answered. Per fingerprint: normalized
text (constants as $n, never the literal values), intent (intent.py; with the query cache on, a
read's DistribCache class too: point, range, analytic, vector), calls, errors by SQLSTATE,
rows, total/min/max/mean/stddev and quantiles (sketch.py), first and last seen, calls per node,
database and user. Memory is bounded: at most `max_fingerprints` shapes; beyond that the least
called 5 % are folded into one `other` entry.

Slow queries go to the slow-query log (slowlog.py), repeated shapes in a transaction to the N+1
detector (nplusone.py).
"""
import math
from math import log
import time


from ..sqlshape import fast_key, fingerprint_of, normalized, skeleton as text_skeleton
from ..cache.policy import workload_class
from .intent import intent
from .nplusone import NPlusOne
from .sketch import FLOOR_S, LOG_GAMMA, Sketch
from .slowlog import SlowLog

SORTS = {"total_time": lambda s: s.total, "calls": lambda s: s.calls, "mean": lambda s: s.total / (s.calls or 1),
         "p99": lambda s: s.sketch.quantile(0.99) or 0, "errors": lambda s: sum(s.errors.values()),
         "rows": lambda s: s.rows, "max": lambda s: s.max}
PER_BUCKET = 1.0 / LOG_GAMMA
UNKNOWN = object()
TEXTS_KEPT = 20000  # texts and skeletons remembered (then forgotten all at once, and learned again)
LARGE = "large"  # the one fingerprint of texts beyond pipeline.max_parse_bytes (never parsed)


class Stat:
    """One fingerprint's numbers."""
    __slots__ = ("fingerprint", "query", "intent", "cache_class", "calls", "errors", "rows", "total", "sumsq",
                 "min", "max", "sketch", "first", "last", "where")

    def __init__(self, fp, query, kind, cache_class=None):
        self.fingerprint, self.query, self.intent, self.cache_class = fp, query, kind, cache_class
        self.calls = self.rows = 0
        self.total = self.sumsq = self.max = 0.0
        self.min = math.inf
        self.errors, self.where = {}, {}  # SQLSTATE -> n, (node, database, user) -> calls
        self.sketch = Sketch()
        self.first = self.last = time.monotonic()  # (one clock for every process: workers' Stats fold)

    def add(self, took, rows, error, where, now):
        self.calls += 1
        self.total += took
        self.sumsq += took * took
        if took < self.min:
            self.min = took
        if took > self.max:
            self.max = took
        sketch = self.sketch  # (Sketch.add, inline: this runs for every query)
        x = log(took if took > FLOOR_S else FLOOR_S) * PER_BUCKET
        i = int(x) if x < 0 else int(x) + 1  # ceil
        buckets = sketch.buckets
        buckets[i] = buckets.get(i, 0) + 1
        sketch.count += 1
        if rows:
            self.rows += rows
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1
        self.where[where] = self.where.get(where, 0) + 1
        self.last = now

    def fold(self, other):
        """Add other's numbers to this one (the `other` entry, or workers' rows in admin/front.py)."""
        self.calls += other.calls
        self.rows += other.rows
        self.total += other.total
        self.sumsq += other.sumsq
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.sketch.merge(other.sketch)
        for mine, theirs in ((self.errors, other.errors), (self.where, other.where)):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)

    RAW = ("calls", "rows", "total", "sumsq", "max", "errors", "first", "last")

    def raw(self):
        """Everything, exactly (the sketch's buckets too): workers' Stats are folded by admin/front.py."""
        out = {k: getattr(self, k) for k in self.RAW}
        out.update(fingerprint=self.fingerprint, query=self.query, intent=self.intent, cache_class=self.cache_class,
                   min=None if self.min == math.inf else self.min, sketch=self.sketch.buckets,
                   where=[[*k, n] for k, n in self.where.items()])
        return out

    @classmethod
    def load(cls, raw):
        stat = cls(raw["fingerprint"], raw["query"], raw["intent"], raw.get("cache_class"))
        for k in cls.RAW:
            setattr(stat, k, raw[k])
        stat.min = math.inf if raw["min"] is None else raw["min"]
        stat.sketch.buckets = {int(i): n for i, n in raw["sketch"].items()}
        stat.sketch.count = sum(stat.sketch.buckets.values())
        stat.where = {tuple(w[:3]): w[3] for w in raw["where"]}
        return stat

    def view(self):
        calls, ms = self.calls, 1000.0
        mean = self.total / calls if calls else 0.0
        var = max(0.0, self.sumsq / calls - mean * mean) if calls else 0.0
        q = self.sketch.quantile
        return {"fingerprint": self.fingerprint, "query": self.query, "intent": self.intent,
                "cache_class": self.cache_class, "calls": calls,
                "errors": sum(self.errors.values()), "errors_by_sqlstate": dict(self.errors), "rows": self.rows,
                "total_ms": round(self.total * ms, 3), "mean_ms": round(mean * ms, 3),
                "stddev_ms": round(math.sqrt(var) * ms, 3),
                "min_ms": round(self.min * ms, 3) if calls else None, "max_ms": round(self.max * ms, 3),
                "p50_ms": _ms(q(0.5)), "p95_ms": _ms(q(0.95)), "p99_ms": _ms(q(0.99)),
                "first_seen": _iso(self.first), "last_seen": _iso(self.last),
                "nodes": self._by(0), "databases": self._by(1), "users": self._by(2)}

    def _by(self, i):
        out = {}
        for key, n in self.where.items():
            out[key[i]] = out.get(key[i], 0) + n
        return out


def top(stats, sort, limit):
    key = SORTS.get(sort)
    if key is None:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}")
    return sorted(stats, key=key, reverse=True)[:limit]


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


def _iso(t):
    """A monotonic time as UTC wall-clock time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (time.monotonic() - t)))


class Analytics:
    def __init__(self, config, cache=None):
        self.cache = cache  # the query cache (cache/), when on: a read shape's DistribCache class
        self.configure(config)
        self.reset()

    def configure(self, config):
        """(Also at a reload: the numbers stay, settings and the slow log's file change.)"""
        cfg = self.cfg = config.analytics
        self.slow_s = cfg.slow_query_ms / 1000.0 if cfg.slow_query_ms else None
        old = getattr(self, "slow", None)
        self.slow = SlowLog(cfg)
        if old is not None:
            old.close()
            self.slow.recent.extend(old.recent)
            self.slow.count = old.count
        self.n_plus_one = NPlusOne(cfg) if cfg.n_plus_one_threshold else None

    def reset(self):
        self.stats = {}  # fingerprint -> Stat
        self.by_text, self.by_skeleton = {}, {}  # query text / text with literals as ? -> Stat
        self.by_fast = {}  # sqlshape.fast_key (digits as 0) -> Stat
        self.other = Stat("other", "(shapes beyond analytics.max_fingerprints)", "utility")
        self.since = time.monotonic()
        if self.n_plus_one is not None:
            self.n_plus_one.reset()
        self.slow.recent.clear()

    def stat(self, sql, large=False, skeleton=UNKNOWN, ctx=None):
        """The Stat of a query text's fingerprint (made on first sight). Texts seen before, and texts
        that differ from one seen before only in their literals (clients that interpolate values),
        find it without pglast (the fingerprint ignores constants' values): by sqlshape.fast_key
        first, else by the skeleton (given, or the QueryContext's, or computed here)."""
        stat = self.by_text.get(sql)
        if stat is not None:
            return stat
        fast = None if large else fast_key(sql)
        if fast is not None:
            stat = self.by_fast.get(fast)
            if stat is not None:
                return stat
        if ctx is not None:  # (its skeleton, computed once for the stages that need it)
            skeleton = ctx.skeleton
        if skeleton is UNKNOWN:
            skeleton = None if large else text_skeleton(sql)
        if skeleton is not None:
            stat = self.by_skeleton.get(skeleton)
            if stat is not None:
                if fast is not None:
                    self.by_fast[fast] = stat
                return stat
        fp = LARGE if large else fingerprint_of(sql)
        stat = self.stats.get(fp)
        if stat is None:
            if len(self.stats) >= self.cfg.max_fingerprints:
                self._fold_least_called()
            stat = self.stats[fp] = (Stat(fp, "(texts beyond pipeline.max_parse_bytes)", "utility") if large
                                     else self._new(fp, sql))
        if len(self.by_text) + len(self.by_skeleton) + len(self.by_fast) > TEXTS_KEPT:
            self.by_text.clear()
            self.by_skeleton.clear()
            self.by_fast.clear()
        if fast is not None:
            self.by_fast[fast] = stat
        if skeleton is not None and skeleton != sql:
            self.by_skeleton[skeleton] = stat
        elif len(sql) <= 4096:
            self.by_text[sql] = stat
        return stat

    def _new(self, fp, sql):
        kind, cache_class = intent(sql), None
        if kind == "read" and self.cache is not None:  # (point, range, analytic or vector: cache/policy.py)
            shape = self.cache.shapes.get(sql)[0]
            cache_class = workload_class(shape) if shape.why_not is None else None
        return Stat(fp, normalized(sql), kind, cache_class)

    def _fold_least_called(self):
        ranked = sorted(self.stats.values(), key=lambda s: (s.calls, s.last))
        for stat in ranked[:max(1, len(ranked) // 20)]:
            self.other.fold(stat)
            del self.stats[stat.fingerprint]
        self.by_text.clear()  # (they may lead to a folded Stat)
        self.by_skeleton.clear()
        self.by_fast.clear()

    def record(self, session, ctx, tag, error, node, status):
        """A query's answer is complete (its ReadyForQuery, or the proxy answered it)."""
        stat = ctx.stat
        if stat is None:
            return
        now = time.monotonic()
        took = now - ctx.started
        rows = None
        if tag and 47 < tag[-2] < 58:  # (a count ends the command tag: "SELECT 5\0", "INSERT 0 1\0")
            rows = int(tag[tag.rfind(b" ") + 1:-1])
        where = session.analytics_where
        if where is None or where[0] != node:  # (one tuple per session and node, not one per query)
            where = session.analytics_where = (node, session.database, session.user)
        stat.add(took, rows, error, where, now)
        if self.slow_s is not None and took >= self.slow_s:
            self.slow.add(session, ctx, stat, took, rows, error, node)
        n_plus_one = self.n_plus_one
        if n_plus_one is not None:
            run = session.analytics_run
            if (run is not None and run.stat is stat and run.before is None  # (a run with no "1": only counted)
                    and (run.open or now - run.last <= n_plus_one.window_s)):
                run.count += 1
                run.last, run.open = now, status != b"I"
            else:
                n_plus_one.track(session, stat, status, now)

    def queries(self, sort="total_time", limit=100, raw=False):
        return [s.raw() if raw else s.view() for s in top(self.stats.values(), sort, limit)]

    def prometheus(self):
        """The prometheus_top shapes by total time: (fingerprint, query, calls, seconds, errors)."""
        return [{"fingerprint": s.fingerprint, "query": s.query[:100], "calls": s.calls, "seconds": s.total,
                 "errors": sum(s.errors.values())} for s in top(self.stats.values(), "total_time",
                                                                self.cfg.prometheus_top)]

    def state(self):
        """Totals for /analytics and the status page."""
        calls = sum(s.calls for s in self.stats.values()) + self.other.calls
        return {"fingerprints": len(self.stats), "calls": calls, "other_calls": self.other.calls,
                "slow_queries": self.slow.count,
                "n_plus_one_patterns": len(self.n_plus_one.patterns) if self.n_plus_one else 0,
                "since": _iso(self.since)}
