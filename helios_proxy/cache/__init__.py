"""The query cache: repeated reads answered from the proxy, byte for byte, without a backend.

Where it sits: a pipeline stage after the routing hints (pipeline/stages/cache.py) looks a read up
and answers a hit; a miss goes to the server and the response path (frontend/relay.py) hands the
answer to the `Fill` made for it, which stores it when it completed cleanly. The parts:

- shape.py: what a text is (read or write, constants lifted out, relations, functions), once per
  text (or per text with other literals);
- catalog.py: per database, which relations exist (views and partitions resolved) and how volatile
  each function is;
- store.py: L1, this process, bounded by bytes; warm.py: L2, Redis, shared by proxies;
- logical.py: writes made around the proxy, from a logical replication slot;
- extended.py: the extended protocol's batches, looked up with their Bind's parameters;
- fill.py: a miss's answer, collected on its way to the client and stored when it completed;
- this module: admission (what may be cached), the key, the workload class, invalidation, and the
  quick path (a Query or Parse of a text that hit before, answered before the pipeline runs).

Correct by construction: the key holds the database, the login user, every session setting that
can change a result (role and search_path included), the constant-free parse tree and the
constants' values and kinds. Only a read outside a transaction block (or in a read committed one
that has not written) is looked up or stored, and only the primary's answers are stored; it must
read known tables (no system catalogs, temporary or foreign tables) and call only immutable
functions (stable ones like now() only with a TTL the query or a rule asks for). A write
invalidates what it touches when it is sent and again when its transaction ends; a counter per
relation name makes sure a read that was in flight across a write never stores what it read.
"""
import logging
import time
import uuid
from fnmatch import fnmatchcase
from hashlib import blake2b

from cachetools import LRUCache

from ..errors import ProxyError
from ..jobs import JOBS
from ..routing.classify import READ_ONLY_FUNCTIONS
from ..routing.hints import HINT, parse_hints
from . import catalog as catalogs
from .catalog import on_server
from .fill import Fill
from .logical import LogicalReader
from .policy import (CLASSES, DECAY_AFTER, EXPENSIVE_S, ONE_HIT_CALLS, ONE_HIT_PROBE,  # noqa: F401
                     POPULAR_AFTER, Admission, ClassStats, workload_class)
from .shape import LOOSE, MEMO_LIMIT, Shapes
from .state import CacheState
from .store import Entry, HotTier

log = logging.getLogger(__name__)

# Settings that change no query's result (they are left out of the key, so that clients that differ
# only in them share entries).
NEUTRAL_SETTINGS = frozenset((
    "application_name", "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
    "idle_session_timeout", "work_mem", "maintenance_work_mem", "temp_buffers", "jit", "geqo",
    "random_page_cost", "seq_page_cost", "cpu_tuple_cost", "effective_cache_size", "log_statement",
    "log_min_duration_statement", "synchronous_commit", "tcp_keepalives_idle", "tcp_keepalives_interval",
    "tcp_keepalives_count", "client_min_messages"))
# Volatile functions that change no table: a SELECT calling them is not cached, yet needs no invalidation.
NO_TABLE_EFFECTS = READ_ONLY_FUNCTIONS | frozenset((
    "nextval", "setval", "currval", "lastval", "pg_sleep", "set_config", "txid_current", "pg_current_xact_id",
    "pg_advisory_lock", "pg_advisory_unlock", "pg_try_advisory_lock", "pg_advisory_xact_lock",
    "pg_advisory_lock_shared", "pg_advisory_unlock_all", "pg_notify", "pg_backend_pid", "statement_timestamp",
    "transaction_timestamp", "pg_current_wal_lsn", "pg_current_wal_insert_lsn", "txid_current_if_assigned",
    "pg_cancel_backend", "pg_terminate_backend", "pg_reload_conf"))
UNKNOWN_AGE = 5.0      # a relation the catalog does not know: reload it at most this often
FIRST_SLOT_WAIT = 3.0  # a database's first read waits this long for its logical slot to be made
class QueryCache:
    def __init__(self, proxy):
        self.proxy = proxy
        self.config = cfg = proxy.config.cache
        self.id = uuid.uuid4().hex
        self.shapes = Shapes()
        self.hot = HotTier(cfg.max_bytes)
        self.gens = {}            # (database, name or None) -> writes seen (hot tier and fills)
        self.catalogs = {}        # database -> catalogs.Catalog
        self.loading = set()      # databases whose catalog is being loaded
        self.readers = {}         # database -> LogicalReader (invalidation = "logical")
        self.admissions = LRUCache(maxsize=10000)  # (database, template, hint) -> Admission or (reason, catalog)
        self.known = {}           # (database, text) -> Admission of a simple-protocol read (quick())
        self.quick_ok = False     # no stage but the cache's could change a hit's answer (quick_allowed)
        self.settings_parts = {}  # a session's settings_key -> the part of it in the key
        self.classes = LRUCache(maxsize=cfg.max_fingerprints)  # fingerprint -> ClassStats
        self.rules = cfg.rules
        self.counts = dict.fromkeys(("hits", "misses", "l1_hits", "l2_hits", "l3_hits", "stores", "invalidations",
                                     "invalidated_entries", "too_large", "stale_fills", "flushes", "not_admitted"), 0)
        self.bypass = {}          # reason -> reads not looked up
        self.warm = None
        if cfg.redis_url:
            from .warm import WarmTier
            self.warm = WarmTier(cfg.redis_url, self.id, self._heard, self.flush_hot)
        self.logical = cfg.invalidation == "logical"
        self.primary_changes = proxy.tracker.changes  # (a change empties the cache: primary_changed)

    def primary_changed(self):
        """A failover or switchover: what the old primary answered may hold writes the new one
        never got (an asynchronous standby promoted). Every entry goes, here and in Redis."""
        self.primary_changes = self.proxy.tracker.changes
        log.info("cache: the primary changed; every entry is dropped")
        self.flush()

    def start(self):
        if self.warm is not None:
            self.warm.start()

    def stop(self):
        for reader in list(self.readers.values()):
            reader.stop()
        if self.warm is not None:
            self.warm.stop()

    def reader(self, db):
        """invalidation = "logical": the slot reader of db, started on first use (a client's login)."""
        reader = self.readers.get(db)
        if reader is None:
            reader = self.readers[db] = LogicalReader(self, db)
        return reader

    def count(self, what, n=1):
        self.counts[what] += n

    def skip(self, reason):
        self.bypass[reason] = self.bypass.get(reason, 0) + 1
        return None

    # --- admission: may this read be served from the cache? ---------------------------------------
    def admit(self, session, shape, sql):
        """The Admission of a read for this session now, or None (counted by reason)."""
        if self.proxy.tracker.changes != self.primary_changes:
            self.primary_changed()
        if session.slot.pinned:
            return self.skip("pinned session")
        state = session.cache_state
        if state is None:
            return self.skip("session began while the cache was off")
        if state.off:
            return self.skip(state.off)
        plan = session.plan
        if plan.owes():
            return self.skip("pipelined")
        status = plan.status
        if status != b"I" and (status != b"T" or state.pending is not None or state.tx_unsafe):
            return self.skip("in a transaction that wrote, failed or changed settings")
        db = session.identity.database
        if self.logical:
            reader = self.reader(db)
            if not reader.wait_ready(FIRST_SLOT_WAIT):
                return self.skip("logical slot not ready")
        elif self.warm is not None and not self.warm.subscribed:
            return self.skip("redis unavailable")  # other proxies' writes would not be heard
        if state.settings_stale:
            self.capture_settings(session, state)
        catalog = self.catalog(session)
        if catalog is None:
            return self.skip("catalog unavailable")
        if status == b"T" and session.settings.values.get("default_transaction_isolation",
                                                     catalog.isolation).lower() not in LOOSE:
            return self.skip("in a repeatable read or serializable transaction")
        hint = HINT.match(sql) if "/*+" in sql[:4096] else None
        key = (db, shape.template, hint.group(0) if hint else "")  # (one admission per shape)
        adm = self.admissions.get(key)
        if adm is None or (adm.__class__ is Admission and adm.catalog is not catalog) or (
                adm.__class__ is tuple and adm[1] is not catalog):
            adm = self.admissions[key] = self._admit(shape, sql if hint else "", catalog, hint is not None)
        if adm.__class__ is tuple:
            reason = adm[0]
            if reason.startswith("unknown relation") and time.monotonic() - catalog.loaded > UNKNOWN_AGE:
                catalog.stale = True  # perhaps created since: look again (at most every UNKNOWN_AGE s)
            return self.skip(reason.split(" ", 2)[0] + " relation" if reason.startswith("unknown") else reason)
        return adm

    def _admit(self, shape, sql, catalog, hinted):
        why = catalog.why_not(shape.reads)
        if why is not None:
            return (why, catalog)
        stable = shape.stable
        for name in shape.functions:
            volatility = catalog.volatility.get(name)
            if volatility is None:
                return ("unknown function", catalog)
            if volatility == "v":
                return ("volatile function", catalog)
            if volatility == "s":
                stable = True
        ttl = self.config.ttl_s
        cls = workload_class(shape)
        ttl *= {"analytic": 4, "vector": 2}.get(cls, 1)
        explicit = False
        if hinted:
            try:
                hints = parse_hints(sql, None)
            except ProxyError:
                hints = {}
            if hints.get("cache") == "off":
                return ("cache=off hint", catalog)
            if "cache_ttl" in hints:
                ttl, explicit = float(hints["cache_ttl"]), True
        for rule in self.rules:
            pattern = rule.table.rsplit(".", 1)[-1]
            if any(fnmatchcase(name, pattern) for _, name in shape.reads):
                if not rule.cache:
                    return ("rule", catalog)
                if rule.ttl_s is not None:
                    ttl = min(ttl, rule.ttl_s) if not explicit else ttl
                    explicit = explicit or rule.stable_functions
        if stable and not explicit:
            return ("stable function", catalog)
        if ttl <= 0:
            return ("ttl 0", catalog)
        tiers = ("l2",) if cls == "vector" and self.warm is not None else ("l1", "l2")
        return Admission(shape, catalog.deps(shape.reads), ttl, cls, tiers, catalog)

    def catalog(self, session):
        """The session's database's catalog, loaded (through its server) when missing or stale."""
        db = session.identity.database
        cat = self.catalogs.get(db)
        if cat is not None and not cat.stale and time.monotonic() - cat.loaded < self.config.catalog_refresh_s:
            return cat
        if db in self.loading:
            return cat if cat is not None and not cat.stale else None
        self.loading.add(db)
        try:
            cat = self.catalogs[db] = on_server(session, catalogs.load)
        except (ProxyError, OSError) as e:
            log.info("cache: loading the catalog of %s failed (%s); not caching it for now", db, e)
            return None
        finally:
            self.loading.discard(db)
        return cat

    def capture_settings(self, session, state):
        """Session pooling, after the client changed settings: read them back from its server. Its
        startup options are not 'session' settings there: they stay, unless changed since."""
        from ..pool import session_state
        if state.startup is None:
            state.startup = dict(session.settings.values)
        try:
            session.settings.set({**state.startup, **on_server(session, session_state.capture)})
            state.settings_stale = False
        except (ProxyError, OSError) as e:
            log.info("%r: reading its settings back failed (%s)", session, e)

    @staticmethod
    def session_state():
        """A new session's part of the cache (state.py)."""
        return CacheState()

    # --- the quick path ---------------------------------------------------------------------------
    def quick_allowed(self, stages):
        """Whether a Query whose text was admitted before may be answered before the pipeline runs:
        only when every stage built is one that leaves a cacheable read alone (plugins may not)."""
        self.quick_ok = all(getattr(stage, "leaves_reads_alone", False) for stage in stages)

    def remember(self, session, sql, adm, values):
        """A simple-protocol read was admitted: the next Query of this text may take the quick path."""
        known = self.known
        if len(known) >= 10000:
            known.clear()
        if len(sql) <= MEMO_LIMIT:
            known[(session.identity.database, sql)] = (adm, values)

    def quick(self, session, data, begin, end):
        """A simple-protocol hit found by the Query's exact text before the pipeline runs (the
        usual case of a hot read): its whole answer with ReadyForQuery, or None (the slow path
        decides, as if this were not here)."""
        with memoryview(data) as view:
            sql = str(view[begin + 5:end - 1], "utf-8", "replace")
        found = self.known_now(session, sql)
        if found is None:
            return None
        adm, values = found
        entry = self.hot_hit(adm, self.key(session, adm, values))
        if entry is None or entry.rlen < 0:
            self.forget(session, sql)
            return None
        return entry.wire

    def forget(self, session, sql):
        """A text that missed on the quick path leaves it until it hits again (a text with ever new
        parameters must not pay for a quick look each time)."""
        self.known.pop((session.identity.database, sql), None)

    def known_now(self, session, sql):
        """(Admission, constants) of a text admitted before, if every condition of admit() holds for
        this session now (else None: the slow path decides)."""
        state = session.cache_state
        if session.slot.pinned or state is None or state.off or state.settings_stale or not session.slot.idle.is_set():
            return None  # (a lease still ending may be reading the client's new settings back)
        plan = session.plan
        if (plan.entries or plan.outstanding or plan.in_extended or plan.status != b"I"
                or plan.completions is not None or self.proxy.tracker.changes != self.primary_changes):
            return None
        db = session.identity.database
        found = self.known.get((db, sql))
        if found is None:
            return None
        cat = found[0].catalog
        if cat.stale or cat is not self.catalogs.get(db) or time.monotonic() - cat.loaded >= self.config.catalog_refresh_s:
            return None
        if self.logical:
            reader = self.readers.get(db)
            if reader is None or not reader.ready:
                return None
        elif self.warm is not None and not self.warm.subscribed:
            return None
        return found

    def hot_hit(self, adm, key):
        """The hot tier's entry for key, counted as a hit; None (not counted: the slow path will)."""
        entry = self.hot.get(key, time.monotonic())
        if entry is None:
            return None
        counts = self.counts
        counts["hits"] += 1
        counts["l1_hits"] += 1
        stats = self.stats_of(adm)
        stats.calls += 1
        stats.hits += 1
        return entry

    # --- the key and the lookup -----------------------------------------------------------------
    def key(self, session, adm, values, formats=None):
        part = self.settings_parts.get(session.settings.key)
        if part is None:
            if len(self.settings_parts) > 10000:
                self.settings_parts.clear()
            part = self.settings_parts[session.settings.key] = tuple(
                kv for kv in session.settings.key if kv[0].lower() not in NEUTRAL_SETTINGS)
        return (session.identity.database, session.identity.user, part, adm.template, values, formats)

    def lookup(self, session, adm, key, origin):
        """(entry, None) on a hit; (None, Fill) on a miss."""
        entry = self.hot_hit(adm, key)
        if entry is not None:
            if entry.origin != origin:
                self.counts["l3_hits"] += 1
            return entry, None
        stats = self.stats_of(adm)
        stats.calls += 1
        warm_gens = None
        warm = self.warm
        if (warm is not None and "l2" in adm.tiers and warm.usable()
                and not warm.busy(session.identity.database, adm.names)):
            entry, warm_gens = self._fetch(session, adm, key, origin)
            if entry is not None:
                stats.hits += 1
                return entry, None
        self.counts["misses"] += 1
        stats.misses += 1
        return None, Fill(self, key, adm, session, warm_gens, origin)

    def _fetch(self, session, adm, key, origin):
        from .warm import Down, decode
        try:
            value, current = self.warm.fetch(digest(key), session.identity.database, adm.sorted_names)
        except Down:
            return None, None
        if value is None:
            return None, current
        try:
            rowdesc, body, gens, meta = decode(value)
        except Exception as e:  # noqa: BLE001 - a corrupt value is a miss, never a failed query
            log.info("cache: an unreadable entry in redis (%s)", e)
            return None, current
        if gens != current:
            return None, current
        self.counts["hits"] += 1
        self.counts["l2_hits"] += 1
        entry = Entry(key, rowdesc, body, time.monotonic() + min(meta.get("ttl", adm.ttl), adm.ttl),
                      adm.names, session.identity.database, adm.cls, meta.get("o"))
        if entry.origin != origin:
            self.counts["l3_hits"] += 1
        if "l1" in adm.tiers:
            self.hot.put(entry)
        return entry, current

    def fill_target(self, adm, target):
        """(store the miss?, where it goes). Only the primary's answers are stored (a standby may not
        have replayed a write that invalidated the entry): a miss headed for a standby goes to the
        primary instead while its shape is new or often asked again; else it stays, not stored."""
        if target is None or target[0] == "primary":
            return True, target
        stats = self.classes.get(adm.fingerprint)
        if stats is not None and stats.calls >= POPULAR_AFTER and stats.hits * 2 < stats.calls:
            return False, target
        return True, ("primary", None)

    def cold(self, shape):
        """Whether this read skips the cache now (ClassStats.skip_now), by the shape's own record."""
        stats = shape.stats
        if stats is not None and stats.skip_now():
            self.counts["not_admitted"] += 1
            return True
        return False

    def stats_of(self, adm):
        fp = adm.fingerprint
        stats = self.classes.get(fp)
        if stats is None:
            stats = self.classes[fp] = ClassStats(fp, adm.cls)
        elif stats.calls >= DECAY_AFTER:  # the recent past counts: a shape's workload may change
            stats.calls, stats.hits, stats.misses = stats.calls // 2, stats.hits // 2, stats.misses // 2
            stats.miss_seconds /= 2
        return stats

    def store(self, fill):
        """A miss answered cleanly: keep it, unless a write touched what it reads meanwhile, or
        its shape's record says keeping it is not worth it (DistribCache's admission by cost)."""
        adm, db = fill.adm, fill.database
        took = time.monotonic() - fill.started
        stats = self.classes.get(adm.fingerprint)
        tiers, ttl = adm.tiers, adm.ttl
        if stats is not None:
            stats.miss_seconds += took
            if stats.misses and stats.miss_seconds / stats.misses >= EXPENSIVE_S:
                tiers, ttl = ("l1", "l2"), ttl * 2  # expensive to recompute: shared, kept longer
        if self.generations(db, adm.sorted_names) != fill.gens:
            self.counts["stale_fills"] += 1
            return
        if self.logical and not getattr(self.readers.get(db), "ready", False):
            return
        body = b"".join(fill.parts)
        entry = Entry(fill.key, fill.rowdesc, body, time.monotonic() + ttl, adm.names, db, adm.cls, fill.origin)
        self.counts["stores"] += 1
        if "l1" in tiers:
            self.hot.put(entry)
        if self.warm is not None and "l2" in tiers and fill.warm_gens is not None:
            from .warm import encode
            value = encode(fill.rowdesc, body, fill.warm_gens, {"ttl": ttl, "o": fill.origin, "c": adm.cls})
            JOBS.submit(self.warm.store, digest(fill.key), value, ttl)

    # --- invalidation ----------------------------------------------------------------------------
    def generations(self, db, names):
        gens = self.gens
        return (gens.get((db, None), 0), *[gens.get((db, n), 0) for n in names])

    def invalidate(self, db, names, publish=True):
        """Writes to names (None: anything) of db: their entries go, here and (publish) everywhere."""
        gens = self.gens
        for name in (names if names is not None else (None,)):
            gens[(db, name)] = gens.get((db, name), 0) + 1
        self.counts["invalidations"] += 1
        self.counts["invalidated_entries"] += self.hot.invalidate(db, names)
        if names is None and db in self.catalogs:
            self.catalogs[db].stale = True  # DDL may have changed relations or functions
        if publish and self.warm is not None:
            JOBS.submit(self.warm.invalidate, db, None if names is None else set(names))

    def _heard(self, db, names):
        self.invalidate(db, names, publish=False)

    def flush_hot(self):
        self.counts["flushes"] += 1
        for key in list(self.gens):
            self.gens[key] += 1
        self.hot.flush()

    def flush(self):
        """Every entry here, and (Redis) everywhere: the epoch moves, every proxy drops its hot tier."""
        self.flush_hot()
        if self.warm is not None:
            JOBS.submit(self.warm.flush)

    def wrote(self, session, names):
        """A write is about to go out (names None: it may touch anything): invalidate now, and
        again when its transaction ends (relay.py calls ended()). What it reaches beyond names
        (foreign-key actions, triggers, rules: catalog.reach) goes too."""
        names = self.invalidate_writes(session.identity.database, names)
        state = session.cache_state
        if state is None:
            return
        pending = state.pending
        if names is None or pending is ALL:
            state.pending = ALL
        elif pending is None:
            state.pending = set(names)
        else:
            pending.update(names)

    def invalidate_writes(self, db, names):
        """Writes to names of db (None: anything) and to what they reach (foreign-key actions,
        triggers, rules: catalog.reach) are invalidated; what was invalidated (None: anything)."""
        if names is not None:
            cat = self.catalogs.get(db)
            if cat is not None and (cat.anything or cat.cascades or cat.views):
                names = cat.reach(names)
        self.invalidate(db, names)
        return names

    def ended(self, session, done):
        """A ReadyForQuery 'I' after writes or settings in a transaction: the writes committed (or
        rolled back) and are invalidated again; done: nothing more owed."""
        state = session.cache_state
        pending = state.pending
        if pending is not None:
            self.invalidate(session.identity.database, None if pending is ALL else pending)
        if done:
            state.pending = None
            if state.tx_unsafe:
                state.tx_unsafe = False
                state.settings_stale = not session.identity.pooled  # (SET LOCAL values are gone now)

    def not_a_read(self, session, shape):
        """A statement the cache never serves: what it writes is invalidated; what it does to the
        session (settings, temporary tables) is noted."""
        state = session.cache_state
        if state is not None:
            if shape.creates_temp:
                state.off = "temporary table in session"
            if shape.forgets:  # DEALLOCATE, DISCARD: a Bind of a statement it forgot must reach the server
                state.named.clear()
            if shape.sets or shape.strict:  # SET LOCAL, SET TRANSACTION ISOLATION...: nothing from the
                state.tx_unsafe = True  # cache until the transaction ends (relay.py: ended())
                if not session.identity.pooled:
                    state.settings_stale = True
        if shape.everything:
            self.wrote(session, None)
        elif shape.writes:
            self.wrote(session, shape.writes)
        self.check_functions(session, shape)

    def check_functions(self, session, shape):
        """A function that is volatile (or unknown) and not known to leave tables alone may write
        anything: the whole database is invalidated (and it may change settings)."""
        if not shape.functions:
            return
        cat = self.catalogs.get(session.identity.database)
        memo = shape.effects
        if memo is not None and memo[0] is cat:
            unknown = memo[1]
        else:
            unknown = any(f not in NO_TABLE_EFFECTS and (cat is None or cat.volatility.get(f, "v") == "v")
                          for f in shape.functions)
            shape.effects = (cat, unknown)
        if unknown:  # (it may also have called set_config: session pooling reads its settings back)
            self.wrote(session, None)
            if not session.identity.pooled and session.cache_state is not None:
                session.cache_state.settings_stale = True

    # --- the admin API ---------------------------------------------------------------------------
    def state(self):
        c = self.counts
        looked = c["hits"] + c["misses"]
        out = dict(c, enabled=True, entries=len(self.hot), bytes=self.hot.bytes, max_bytes=self.hot.max_bytes,
                   evictions=self.hot.evictions, hit_rate=round(c["hits"] / looked, 4) if looked else None,
                   bypass=dict(self.bypass), invalidation=self.config.invalidation)
        out["classes"] = {cls: sum(1 for s in list(self.classes.values()) if s.cls == cls) for cls in CLASSES}
        out["fingerprints"] = [
            {"fingerprint": s.fingerprint, "class": s.cls, "calls": s.calls, "hits": s.hits, "misses": s.misses,
             "mean_miss_ms": round(1000 * s.miss_seconds / s.misses, 3) if s.misses else None}
            for s in sorted(list(self.classes.values()), key=lambda s: -s.calls)[:100]]
        if self.warm is not None:
            out["redis"] = {"up": self.warm.up, "subscribed": self.warm.subscribed, "errors": self.warm.errors,
                            "reconnects": self.warm.reconnects}
        if self.logical:
            out["logical"] = {db: {"ready": r.ready, "slot": r.slot, "lag_bytes": r.lag_bytes, "changes": r.changes,
                                   "error": r.error} for db, r in list(self.readers.items())}
        return out


ALL = "all"  # CacheState.pending: a write of unknown extent


def digest(key):
    return blake2b(repr(key).encode(), digest_size=20).digest()
