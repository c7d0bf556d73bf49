"""`invalidation = "logical"`: writes made around the proxy (psql straight on PostgreSQL, another
application, a cron job) invalidate the cache too, read from a logical replication slot.

One reader per database, on the primary: a *temporary* slot with the built-in test_decoding plugin
(`pg_create_logical_replication_slot(..., temporary => true)`), so PostgreSQL drops it itself when
the reader's connection ends, whether the proxy shuts down, crashes or loses the primary; the slot
can never hold WAL after the proxy is gone. Every `logical_poll_s` the reader consumes the changes
(`pg_logical_slot_get_changes`) and keeps only the names of the tables they touch, extracted on the
server. If it falls more than `logical_max_lag_bytes` behind, it drops the slot, voids the
database's entries and starts over. Until its slot exists (and after the slot is lost) the database
is served without the cache: a change nobody reads must not leave an entry stale.

Needs `wal_level = logical` on the primary and a user allowed to create slots (REPLICATION or a
superuser: the health checker's user).
"""
import logging
import os
import re

import gevent
from gevent.event import Event

from ..backend.connection import ServerConnection
from ..errors import ProxyError

log = logging.getLogger(__name__)
APPLICATION_NAME = "helios-proxy cache invalidation"
CHANGES = (r"SELECT DISTINCT substring(data from '^table (.*?): [A-Z]+:') FROM "
           r"pg_catalog.pg_logical_slot_get_changes(%s, NULL, NULL, 'skip-empty-xacts', '1') "
           r"WHERE data LIKE 'table %%'")
LAG = ("SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
       "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s")
QUALIFIED = re.compile(r'^(?:"(?:[^"]|"")*"|[^."]*)\.(.*)$')


def relation_name(qualified):
    """The bare relation name of test_decoding's schema.table (quoted where needed)."""
    match = QUALIFIED.match(qualified)
    name = match.group(1) if match else qualified
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def literal(text):
    return "'" + text.replace("'", "''") + "'"


class LogicalReader:
    """The slot reader of one database."""

    def __init__(self, cache, database):
        self.cache, self.database = cache, database
        self.slot = f"helios_cache_{os.getpid()}_{abs(hash(database)) % 10 ** 8}"
        self.ready = False     # the slot exists and is being read: the database may be cached
        self.lag_bytes = 0
        self.changes = 0       # tables changed, as the slot told (one per table per poll)
        self.error = None      # why it is not ready, when it is not
        self.conn = None
        self.up = Event()      # set while ready
        self.greenlet = gevent.spawn(self.run)

    def wait_ready(self, timeout):
        """While the first slot is being made (no failure yet), wait up to timeout for it."""
        if not self.ready and self.error is None:
            self.up.wait(timeout)
        return self.ready

    def run(self):
        cfg = self.cache.config
        while True:
            try:
                self.connect()
                while True:
                    self.poll()
                    gevent.sleep(cfg.logical_poll_s)
            except gevent.GreenletExit:
                self.close(drop=True)
                raise
            except (ProxyError, OSError) as e:
                message = getattr(e, "message", None) or str(e)
                if self.error != message:
                    log.warning("cache: the logical slot of database %s is not available (%s); %s is served "
                                "without the cache until it is", self.database, message, self.database)
                self.error = message
                self.lost()
                gevent.sleep(cfg.logical_retry_s)

    def connect(self):
        proxy = self.cache.proxy
        node = proxy.tracker.current()
        if node is None:
            raise OSError("no confirmed primary")
        self.conn = ServerConnection(node, self.database, proxy.health.credentials(), proxy.config)
        self.conn.connect({"application_name": APPLICATION_NAME})
        self.conn.execute(f"SELECT pg_catalog.pg_create_logical_replication_slot({literal(self.slot)}, "
                          "'test_decoding', true)")
        self.node = node.name
        self.ready, self.error = True, None
        self.up.set()
        log.info("cache: reading writes to database %s from the temporary logical slot %s on %s",
                 self.database, self.slot, node.name)

    def poll(self):
        rows = self.conn.execute(CHANGES % literal(self.slot))
        names = {relation_name(r[0]) for r in rows if r[0]}
        if names:  # (and in the shared tier, whose entries other proxies may have stored)
            self.changes += len(names)
            self.cache.invalidate(self.database, names)
        lag = self.conn.execute(LAG % literal(self.slot))
        self.lag_bytes = int(lag[0][0]) if lag and lag[0][0] is not None else 0
        limit = self.cache.config.logical_max_lag_bytes
        if limit and self.lag_bytes > limit:
            raise OSError(f"slot {self.slot} is {self.lag_bytes} bytes behind (more than "
                          f"cache.logical_max_lag_bytes): dropped")
        if self.cache.proxy.tracker.current() is not None and self.cache.proxy.tracker.current().name != self.node:
            raise OSError("the primary changed")

    def lost(self):
        """Whatever happened meanwhile is unknown: the database's entries go."""
        was = self.ready
        self.ready = False
        self.up.clear()
        self.close(drop=True)
        if was:
            self.cache.invalidate(self.database, None)

    def close(self, drop=False):
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if drop and not conn.broken:
            try:
                with gevent.Timeout(2, TimeoutError):
                    conn.execute(f"SELECT pg_catalog.pg_drop_replication_slot({literal(self.slot)})")
            except (ProxyError, OSError, TimeoutError):
                pass  # (temporary: it goes with the connection anyway)
        conn.close()

    def stop(self):
        self.greenlet.kill(block=True, timeout=3)
