"""The router: where a lease goes. Reads to a standby chosen by the balancer (the primary when the
config says so or none is fit), writes to the primary, and read-your-writes: after a client's
transaction on the primary, its reads only go to a standby that has replayed that transaction's
WAL position (checked on the standby, waiting at most `routing.ryw_timeout`), else to the primary.
"""
import logging
import time
from collections import defaultdict

import gevent

from ..errors import ProxyError, node_unreachable
from ..lsn import lsn
from .balancer import Balancer
from ..topology.breaker import Breakers
from .classify import CATALOG_QUERY, Classifier
from .tables import TableRouter

# The primary's WAL insert position, its offset in its segment, the WAL page size (write_position).
WRITE_POSITION = ("SELECT l, (pg_catalog.pg_walfile_name_offset(l)).file_offset, "
                  "pg_catalog.current_setting('wal_block_size') FROM pg_catalog.pg_current_wal_insert_lsn() l")
SHORT_PAGE_HEADER, LONG_PAGE_HEADER = 24, 40  # a WAL page's header; the long one begins a segment (64-bit)

log = logging.getLogger(__name__)
PRIMARY, STANDBY = "primary", "standby"
COUNTED_AS = {STANDBY: "reads", PRIMARY: "writes", "errors": "errors"}  # (count: a lease's target, or errors)


def new_counts():
    return {"reads": 0, "writes": 0, "errors": 0}


class Router:
    def __init__(self, config, tracker):
        self.breakers = Breakers(config)  # per node (topology/breaker.py): reads kept away while open
        self.tables = TableRouter(config)  # schema routing: rules and temperatures per table (tables.py)
        self.configure(config)
        self.tracker = tracker  # which node is the primary, which are standbys (topology/tracker.py)
        self.replayed = {}      # node name -> highest replay LSN seen there
        self.loading = set()    # databases whose function catalog is being loaded
        self.stats = defaultdict(new_counts)  # node name -> {"reads": n, "writes": n, "errors": n}: counts()
        # the node names of the leases begun, by target, not added up yet (a list's append per lease,
        # not a Python call: counts() adds them up every 2 s and before a read)
        self.leased = {PRIMARY: [], STANDBY: []}
        self.lag = None         # LagMonitor, once started (lag.py)
        self.health = None      # HealthChecker (topology/health.py), once started
        self.large_queries = 0  # sent to the primary unclassified: larger than pipeline.max_parse_bytes

    def configure(self, config):
        self.config = config
        r = config.routing
        self.classifier = Classifier(r.read_only_functions, r.volatile_functions)
        self.balancer = Balancer(r.strategy)
        if hasattr(self, "breakers"):
            self.breakers.configure(config)
            self.tables.configure(config)
        self.on = self.active(config)  # splitting reads at all (decided once per configuration)

    @staticmethod
    def active(config):
        return (config.routing.enabled and config.pooled_modes
                and any(n.role == STANDBY for n in config.nodes))

    def primary(self):
        """The confirmed primary, or None during a failover or switchover (writes then wait in the
        switchover buffer, topology/switchover_buffer.py)."""
        return self.tracker.current()

    def node(self, name):
        return next(n for n in self.config.nodes if n.name == name)

    def standbys(self):
        return self.tracker.standbys()

    def read_nodes(self, lag=None):
        """Nodes fit for a read now; lag: the read's own lag requirement (routing/tables.py)."""
        standbys = [n for n in self.standbys() if (self.health is None or self.health.healthy(n))
                    and (self.lag is None or not self.lag.too_far(n, lag)) and self.breakers.allows(n)]
        mode = self.config.routing.primary_reads
        primary = self.primary()
        if primary is not None and (mode == "always" or (mode == "if_no_standby" and not standbys)):
            return standbys + [primary]
        return standbys

    def pick(self, target, node_name=None, lag=None):
        """The node for a lease: a named node, a standby for a read; None means the primary."""
        if node_name:
            return self.node(node_name)
        if target == STANDBY:
            return self.balancer.choose(self.read_nodes(lag))
        return None

    def unreachable(self, node, reason, error=None):
        """A client could not reach a standby: unhealthy until the probes see it back. (The
        primary is only suspected: the probes decide, since losing it starts a failover.) A node
        that is up but refused the client (its pg_hba.conf, its connection limit) is its circuit
        breaker's business when that is on (the pool told it: pool/pool.py): the probes would
        find it well."""
        if self.breakers.enabled and error is not None and not node_unreachable(error):
            return
        if self.health is None:
            return
        if node.name == self.tracker.primary:
            self.health.suspect(node, reason)
        else:
            self.health.failed(node, reason, at_once=True)

    def suspect(self, node, reason):
        """A client's connection to node failed: have the health checker look at once."""
        if self.health is not None:
            self.health.suspect(node, reason)

    def count_large(self):
        """A query too large to classify went to the primary (pipeline.max_parse_bytes)."""
        self.large_queries += 1

    def count(self, node, what):
        """Per-node statistics: reads, writes (by lease target: standby, primary), errors."""
        self.stats[node.name][COUNTED_AS[what]] += 1  # (a node's first count makes its counters)

    def counts(self):
        """Per-node statistics (node name -> {"reads", "writes", "errors"}), the leases begun since
        the last call added up."""
        stats = self.stats
        for target, names in self.leased.items():
            if names:
                self.leased[target] = []
                what = COUNTED_AS[target]
                counted = 0
                for name, row in stats.items():  # (the nodes counted before: list.count, a C loop of
                    n = names.count(name)        # identity checks, ~15 instructions a lease; a Counter: ~400)
                    row[what] += n
                    counted += n
                if counted < len(names):  # a node's first leases (a set of the names, C loops again: a
                    for name in set(names).difference(stats):  # Counter over a generator was ~950 a lease)
                        stats[name][what] += names.count(name)
        return stats

    # --- the catalog of read-only functions ---------------------------------------------------
    def ensure_catalog(self, database, pool):
        """Load the database's non-volatile function names once (through pool, on the primary)."""
        if database in self.classifier.catalog:
            return
        self.classifier.load_catalog(database, ())  # others meanwhile: unknown functions are writes
        conn, ok = None, False
        self.loading.add(database)
        try:
            conn = pool.acquire()
            rows = conn.execute(CATALOG_QUERY)
            self.classifier.load_catalog(database, [r[0] for r in rows])
            ok = True
        except (ProxyError, OSError) as e:  # the primary is away: classify without it, load it later
            log.info("loading the function catalog of %s failed (%s); trying again later", database, e)
            self.classifier.catalog.pop(database, None)
        finally:
            self.loading.discard(database)
            if conn is not None:
                pool.release(conn, reusable=ok)

    def catalog_loaded(self, database):
        """Whether classifying a query of database needs nothing loaded first (the fast path asks)."""
        return database in self.classifier.catalog and database not in self.loading

    # --- read-your-writes ----------------------------------------------------------------------
    def caught_up(self, node, server, wanted):
        """Whether node has replayed LSN `wanted`, asking it (briefly waiting) when not known yet."""
        if self.replayed.get(node.name, -1) >= wanted:
            return True
        deadline = time.monotonic() + self.config.routing.ryw_timeout
        while True:
            seen = lsn(server.execute("SELECT pg_catalog.pg_last_wal_replay_lsn()")[0][0])
            if seen is None:  # not a standby (e.g. the primary serving reads)
                return True
            self.replayed[node.name] = max(seen, self.replayed.get(node.name, -1))
            if seen >= wanted:
                return True
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(0.002)

    @staticmethod
    def write_position(server):
        """Where the primary's WAL ends now: past the commit just made, even an asynchronous one.
        The insert position is where the next record will begin: just past a page's header when
        the last record filled its page (always so after a segment switch: archive_timeout on an
        idle primary), a position no standby ever reports as replayed until something else is
        written. The end of the last record is the page's start then."""
        return Router.position_of(server.execute(WRITE_POSITION)[0])

    @staticmethod
    def position_of(row):
        """write_position() from WRITE_POSITION's row (text values), asked by whoever ran it."""
        at, in_segment, page = lsn(row[0]), int(row[1]), int(row[2])
        if in_segment == LONG_PAGE_HEADER:
            return at - LONG_PAGE_HEADER
        if at % page == SHORT_PAGE_HEADER:
            return at - SHORT_PAGE_HEADER
        return at
