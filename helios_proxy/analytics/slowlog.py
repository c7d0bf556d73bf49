"""The slow-query log: a query that took `slow_query_ms` or more, as one JSON line in `slow_log`
(rotated at `slow_log_max_bytes`, `slow_log_files` old files kept) and among the recent ones that
`GET /analytics/slow` shows. A line holds the normalized text ($n for every constant); the text as
sent, literals and all, only with `log_parameters = true`.
"""
import collections
import json
import logging
import logging.handlers
import time

RECENT = 200


class SlowLog:
    def __init__(self, cfg):
        self.recent = collections.deque(maxlen=RECENT)
        self.count = 0
        self.log_parameters = cfg.log_parameters
        self.logger = None
        if cfg.slow_log:
            self.logger = logging.getLogger(f"helios_proxy.slow_query_log.{id(self)}")
            self.logger.propagate = False  # (its own file only, never the proxy's log)
            self.logger.setLevel(logging.INFO)
            handler = logging.handlers.RotatingFileHandler(cfg.slow_log, maxBytes=cfg.slow_log_max_bytes,
                                                           backupCount=cfg.slow_log_files)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(handler)

    def add(self, session, ctx, stat, took, rows, error, node, now):
        """now: the monotonic time the query completed (its line may be written a little later)."""
        at = time.time() - (time.monotonic() - now)
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z",
                 "duration_ms": round(took * 1000.0, 3), "fingerprint": stat.fingerprint, "query": stat.query,
                 "intent": stat.intent, "user": session.identity.user, "database": session.identity.database,
                 "node": node, "rows": rows, "sqlstate": error, "session": session.identity.id,
                 "protocol": ctx.protocol}
        if self.log_parameters:
            entry["query_text"] = ctx.sql
        self.count += 1
        self.recent.append(entry)
        if self.logger is not None:
            self.logger.info(json.dumps(entry))

    def close(self):
        if self.logger is not None:
            for handler in list(self.logger.handlers):
                handler.close()
                self.logger.removeHandler(handler)
