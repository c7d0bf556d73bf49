"""Query analytics (`[analytics] enabled = true`): what pg_stat_statements tells about the server,
seen from the proxy, per query shape.

A query's shape is pglast's fingerprint (one for all literal values and parameters, both
protocols, any spacing). The analytics stage (pipeline/stages/analytics.py) stamps the query's
start; the response path (frontend/relay.py) notes its answer at the ReadyForQuery: time from the
client's query to the server's completion, the command tag (its rows), the SQLSTATE of an error,
the node that answered. Noted answers are added up in batches (see `record`). Per fingerprint:
normalized text (constants as $n, never the literal values), intent (intent.py; with the query
cache on, a read's DistribCache class too: point, range, analytic, vector), calls, errors by
SQLSTATE, rows, total/min/max/mean/stddev and quantiles (sketch.py), first and last seen, calls
per node, database and user. Memory is bounded: at most `max_fingerprints` shapes after each
batch; beyond that the least called (5 % at least) are folded into one `other` entry.

Slow queries go to the slow-query log (slowlog.py), repeated shapes in a transaction to the N+1
detector (nplusone.py).
"""
import logging
import math
from operator import mul
import sys
import time

import gevent

from ..sqlshape import DIGITS_TO_0, fast_key, fast_key_sound, fingerprint_of, normalized, skeleton as text_skeleton
from ..cache.policy import workload_class
from .intent import intent
from .nplusone import NPlusOne
from .sketch import Sketch
from .slowlog import SlowLog

SORTS = {"total_time": lambda s: s.total, "calls": lambda s: s.calls, "mean": lambda s: s.total / (s.calls or 1),
         "p99": lambda s: s.sketch.quantile(0.99) or 0, "errors": lambda s: sum(s.errors.values()),
         "rows": lambda s: s.rows, "max": lambda s: s.max}
UNKNOWN = object()
TEXTS_KEPT = 20000  # texts and skeletons remembered (then forgotten all at once, and learned again)
BATCH = 128  # answers noted before they are added up ...
FLUSH_AFTER_S = 0.1  # ... or this long after the first of them (slow-log lines appear this late at most)
logger = logging.getLogger(__name__)
LARGE = "large"  # the one fingerprint of texts beyond pipeline.max_parse_bytes (never parsed)



class SessionState:
    """Analytics' part of one client session (session.analytics_state, written here only)."""
    __slots__ = ("run", "where")

    def __init__(self):
        self.run = None    # the shape it ran last and how often in a row (N+1: nplusone.py)
        self.where = None  # (node, key of node, database, user) its queries count under

class Stat:
    """One fingerprint's numbers."""
    __slots__ = ("fingerprint", "query", "intent", "cache_class", "calls", "errors", "rows", "total", "sumsq",
                 "min", "max", "sketch", "first", "last", "where")

    def __init__(self, fp, query, kind, cache_class=None):
        self.fingerprint, self.query, self.intent, self.cache_class = fp, query, kind, cache_class
        self.calls = self.rows = 0
        self.total = self.sumsq = self.max = 0.0
        self.min = math.inf
        self.errors, self.where = {}, {}  # SQLSTATE -> n, where_key(node, database, user) -> calls
        self.sketch = Sketch()
        self.first = self.last = time.monotonic()  # (one clock for every process: workers' Stats fold)

    def add_all(self, tooks):
        """Executions that took these durations (their other numbers: analytics' flush)."""
        self.calls += len(tooks)
        self.total += sum(tooks)
        self.sumsq += sum(map(mul, tooks, tooks))
        low, high = min(tooks), max(tooks)
        if low < self.min:
            self.min = low
        if high > self.max:
            self.max = high
        self.sketch.add_all(tooks)

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
                   where=[[*k.split("\0"), n] for k, n in self.where.items()])
        return out

    @classmethod
    def load(cls, raw):
        stat = cls(raw["fingerprint"], raw["query"], raw["intent"], raw.get("cache_class"))
        for k in cls.RAW:
            setattr(stat, k, raw[k])
        stat.min = math.inf if raw["min"] is None else raw["min"]
        stat.sketch.buckets = {int(i): n for i, n in raw["sketch"].items()}
        stat.sketch.count = sum(stat.sketch.buckets.values())
        stat.where = {where_key(*w[:3]): w[3] for w in raw["where"]}
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
            name = key.split("\0")[i]
            out[name] = out.get(name, 0) + n
        return out


def where_key(node, database, user):
    """What a Stat counts calls per: node, database and user as one string (its hash is kept; a
    tuple's is computed at every lookup), the same object for every session (interned)."""
    return sys.intern(f"{node}\0{database}\0{user}")


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
        self.timer = None  # (flush: a loop timer while answers wait to be added up)
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
        self.pending = []  # answers noted, not added up yet (flush)
        self.rows_of = {}  # command tag -> rows (_rows)
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
                if fast is not None and fast_key_sound(fast):
                    self.by_fast[fast] = stat
                return stat
        fp = LARGE if large else fingerprint_of(sql)
        stat = self.stats.get(fp)
        if stat is None:  # (beyond max_fingerprints the least called are folded after the batch: _add_up)
            stat = self.stats[fp] = (Stat(fp, "(texts beyond pipeline.max_parse_bytes)", "utility") if large
                                     else self._new(fp, sql))
        if len(self.by_text) + len(self.by_skeleton) + len(self.by_fast) > TEXTS_KEPT:
            self.by_text.clear()
            self.by_skeleton.clear()
            self.by_fast.clear()
        if fast is not None and fast_key_sound(fast):
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
        for stat in ranked[:max(len(ranked) - self.cfg.max_fingerprints, len(ranked) // 20, 1)]:
            self.other.fold(stat)
            del self.stats[stat.fingerprint]
        self.by_text.clear()  # (they may lead to a folded Stat)
        self.by_skeleton.clear()
        self.by_fast.clear()

    # Recording is two steps. Where a query's answer completes, it is only noted: a tuple appended
    # to `pending` (the session, the query, its command tag and SQLSTATE, the node, the transaction
    # status, the time), by frontend/relay.py's ServerStream.feed itself for the server's answers
    # (no call per query) and by record() for the proxy's own. flush() adds the noted answers up,
    # every BATCH answers or FLUSH_AFTER_S after the first, and before anything reads the numbers:
    # per shape, for the whole batch at once, calls, times and quantiles.
    def record(self, session, ctx, tag, error, node, status):
        """A query's answer is complete (the proxy answered it, or a Bind of a named statement)."""
        if ctx.analyze:
            self.pending.append((session, ctx, tag, error, node, status, time.monotonic()))
            self.tend()

    def tend(self):
        """Answers are pending: add them up now (BATCH of them), or make sure they will be soon."""
        if len(self.pending) >= BATCH:
            self.flush()
        elif self.timer is None and self.pending:
            self.timer = gevent.get_hub().loop.timer(FLUSH_AFTER_S)  # (a new one each time: a one-shot
            self.timer.start(self.flush)                             # timer restarted from a callback
                                                                     # fires at once)

    def flush(self):
        """Add up the answers noted since the last flush (never raises: it runs on the relay's path)."""
        pending, self.pending = self.pending, []
        if self.timer is not None:
            self.timer.stop()
            self.timer = None
        if not pending:
            return
        try:
            self._add_up(pending)
        except Exception:  # (a bug here costs numbers, never a client's answer)
            logger.exception("analytics: recording %d answers failed", len(pending))

    def _add_up(self, pending):
        """The numbers of noted answers: per answer what needs its order (rows, errors, the N+1
        runs, the slow log); per shape, for the whole batch at once, calls, times and quantiles."""
        by_fast, stat_of, rows_of = self.by_fast, self.stat, self.rows_of
        slow_s = self.slow_s if self.slow_s is not None else math.inf
        n_plus_one = self.n_plus_one
        window_s = n_plus_one.window_s if n_plus_one is not None else 0.0
        tooks = {}  # Stat -> durations
        for session, ctx, tag, error, node, status, now in pending:
            sql = ctx.sql
            stat = None if ctx.large else by_fast.get(sql.encode().translate(DIGITS_TO_0))  # (stat()'s first try)
            if stat is None:
                stat = stat_of(sql, ctx.large, ctx=ctx)
            took = now - ctx.started
            durations = tooks.get(stat)
            if durations is None:
                tooks[stat] = [took]
            else:
                durations.append(took)
            stat.last = now
            rows = rows_of.get(tag, UNKNOWN)
            if rows is UNKNOWN:
                rows = self._rows(tag)
            if rows:
                stat.rows += rows
            if error is not None:
                stat.errors[error] = stat.errors.get(error, 0) + 1
            state = session.analytics_state
            if state is None:
                state = session.analytics_state = SessionState()
            where = state.where
            if where is None or where[0] != node:  # (one key per session and node, not one per query)
                where = state.where = (node, where_key(node, session.identity.database, session.identity.user))
            counts, where = stat.where, where[1]
            counts[where] = counts.get(where, 0) + 1
            if took >= slow_s:
                self.slow.add(session, ctx, stat, took, rows, error, node, now)
            if n_plus_one is not None:
                run = state.run
                if (run is not None and run.stat is stat and run.before is None  # (a run with no "1": counted)
                        and (run.open or now - run.last <= window_s)):
                    run.count += 1
                    run.last, run.open = now, status != b"I"
                else:
                    n_plus_one.track(session, state, stat, status, now)
        for stat, durations in tooks.items():
            stat.add_all(durations)
        if len(self.stats) > self.cfg.max_fingerprints:  # (not before: this batch's Stats stay until added up)
            self._fold_least_called()

    def _rows(self, tag):
        """The row count that ends a command tag ("SELECT 5\0", "INSERT 0 1\0"; None for "BEGIN\0"
        or no tag), remembered: most tags repeat."""
        rows = int(tag[tag.rfind(b" ") + 1:-1]) if tag and len(tag) > 1 and 47 < tag[-2] < 58 else None
        if len(self.rows_of) > 1000:
            self.rows_of.clear()
        self.rows_of[tag] = rows
        return rows

    def queries(self, sort="total_time", limit=100, raw=False):
        self.flush()
        return [s.raw() if raw else s.view() for s in top(self.stats.values(), sort, limit)]

    def prometheus(self):
        """The prometheus_top shapes by total time: (fingerprint, query, calls, seconds, errors)."""
        self.flush()
        return [{"fingerprint": s.fingerprint, "query": s.query[:100], "calls": s.calls, "seconds": s.total,
                 "errors": sum(s.errors.values())} for s in top(self.stats.values(), "total_time",
                                                                self.cfg.prometheus_top)]

    def state(self):
        """Totals for /analytics and the status page."""
        self.flush()
        calls = sum(s.calls for s in self.stats.values()) + self.other.calls
        return {"fingerprints": len(self.stats), "calls": calls, "other_calls": self.other.calls,
                "slow_queries": self.slow.count,
                "n_plus_one_patterns": len(self.n_plus_one.patterns) if self.n_plus_one else 0,
                "since": _iso(self.since)}
