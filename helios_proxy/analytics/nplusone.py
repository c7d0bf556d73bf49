"""N+1 detection: one query, then the same shape again and again, a row at a time (an ORM loading
each parent's children with its own query). A *run* is a session's consecutive executions of one
fingerprint that stay within one transaction (the previous one left it open) or follow each other
within `n_plus_one_window_ms`, after another shape (the "1"). A run reaching
`n_plus_one_threshold` is reported once per pattern
(preceding fingerprint, repeated fingerprint) in the log, and kept for `GET /analytics/n_plus_one`
with the longest run seen, how often it happened, and a rewrite that fetches all rows at once.
"""
import collections
import logging
import re
import time

log = logging.getLogger(__name__)
PATTERNS_KEPT = 500
EQUALS_PARAMETER = re.compile(r"=\s*\$(\d+)")


class Run:
    __slots__ = ("stat", "count", "before", "last", "open", "pattern")

    def __init__(self, stat, before, now, status):
        self.stat, self.before, self.count, self.last, self.pattern = stat, before, 1, now, None
        self.open = status != b"I"  # the transaction goes on after it


def suggestion(query):
    """The repeated query's shape taking every key at once."""
    one = EQUALS_PARAMETER.search(query)
    if one is None:
        return "fetch the rows of all iterations with one query (a join, or IN/ANY over the keys)"
    return query[:one.start()] + f"= ANY(${one.group(1)})" + query[one.end():] + f"  -- ${one.group(1)}: an array of all keys"


class NPlusOne:
    def __init__(self, cfg):
        self.threshold = cfg.n_plus_one_threshold
        self.window_s = cfg.n_plus_one_window_ms / 1000.0
        self.reset()

    def reset(self):
        self.patterns = collections.OrderedDict()  # (preceding fingerprint, fingerprint) -> report

    def track(self, session, state, stat, status, now):
        """state: the session's analytics part (analytics/__init__.py: SessionState)."""
        run = state.run
        if run is not None and run.stat is stat and (run.open or now - run.last <= self.window_s):
            run.count += 1
            run.last, run.open = now, status != b"I"
            if run.count >= self.threshold and run.before is not None:  # (after another query: N+1)
                if run.count == self.threshold:
                    self._report(session, run)
                else:
                    run.pattern["count"] = max(run.pattern["count"], run.count)
            return
        before = run.stat if run is not None and run.stat is not stat else None  # (X after X is no N+1)
        state.run = Run(stat, before, now, status)

    def _report(self, session, run):
        """A run reached the threshold: a new pattern (logged), or one more occurrence of one."""
        key = (run.before.fingerprint, run.stat.fingerprint)
        pattern = self.patterns.get(key)
        if pattern is None:
            if len(self.patterns) >= PATTERNS_KEPT:
                self.patterns.popitem(last=False)
            pattern = self.patterns[key] = {
                "fingerprint": run.stat.fingerprint, "query": run.stat.query,
                "preceding_fingerprint": key[0], "preceding_query": run.before.query,
                "count": 0, "occurrences": 0, "suggestion": suggestion(run.stat.query),
                "first_seen": _now()}
            log.warning("N+1 queries: %r ran %d times in a row in session %d (user %s, database %s) after %r; "
                        "consider: %s", run.stat.query, run.count, session.identity.id, session.identity.user,
                        session.identity.database, pattern["preceding_query"], pattern["suggestion"])
        pattern["occurrences"] += 1
        pattern["count"] = max(pattern["count"], run.count)
        who = session.identity
        pattern.update(session=who.id, user=who.user, database=who.database, last_seen=_now())
        self.patterns.move_to_end(key)
        run.pattern = pattern  # (a longer run only raises its count)

    def view(self):
        return list(reversed(self.patterns.values()))


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
