"""The hot tier (L1): complete wire-format answers in this process, bounded by bytes, least
recently used first out, each with its expiry and the relation names whose writes invalidate it.

An OrderedDict and an index by name rather than cachetools: an invalidation must find the entries
of a table without scanning, which cachetools' LRUCache cannot. Measured on this machine (1000
entries, keys as the cache builds them): HotTier.get 1.15 us, LRUCache(getsizeof=...).get 1.30 us,
both mostly hashing the key tuple.
"""
from collections import OrderedDict

DATABASE = None  # the index entry of a database as a whole: (database, DATABASE)


READY_IDLE = b"Z\0\0\0\x05I"


class Entry:
    """One answer: `wire` is what a simple-protocol hit sends (RowDescription, DataRows,
    CommandComplete, ReadyForQuery 'I'); the extended protocol takes its parts."""
    __slots__ = ("key", "wire", "rlen", "size", "expires", "names", "database", "cls", "origin")

    def __init__(self, key, rowdesc, body, expires, names, database, cls, origin):
        self.key, self.expires = key, expires
        self.wire = (rowdesc or b"") + body + READY_IDLE
        self.rlen = len(rowdesc) if rowdesc is not None else -1
        self.names, self.database, self.cls, self.origin = names, database, cls, origin
        self.size = len(self.wire) + 200  # (the key, the object, the index)

    @property
    def rowdesc(self):
        return self.wire[:self.rlen] if self.rlen >= 0 else None

    @property
    def body(self):
        return self.wire[max(self.rlen, 0):-len(READY_IDLE)]


class HotTier:
    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.entries = OrderedDict()  # key -> Entry, least recently used first
        self.bytes = 0
        self.index = {}               # (database, name or DATABASE) -> set of keys
        self.evictions = 0

    def __len__(self):
        return len(self.entries)

    def get(self, key, now):
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            self.remove(key)
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, entry):
        if entry.key in self.entries:
            self.remove(entry.key)
        if entry.size > self.max_bytes:
            return
        self.entries[entry.key] = entry
        self.bytes += entry.size
        db = entry.database
        for name in entry.names:
            self.index.setdefault((db, name), set()).add(entry.key)
        self.index.setdefault((db, DATABASE), set()).add(entry.key)
        while self.bytes > self.max_bytes:
            self.remove(next(iter(self.entries)))
            self.evictions += 1

    def remove(self, key):
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        self.bytes -= entry.size
        db = entry.database
        for name in (*entry.names, DATABASE):
            keys = self.index.get((db, name))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.index[(db, name)]

    def invalidate(self, database, names=None):
        """Drop the entries reading any of names in database (names None: all of the database's);
        returns how many went."""
        keys = set()
        for name in (names if names is not None else (DATABASE,)):
            keys.update(self.index.get((database, name), ()))
        for key in keys:
            self.remove(key)
        return len(keys)

    def flush(self):
        n = len(self.entries)
        self.entries.clear()
        self.index.clear()
        self.bytes = 0
        return n
