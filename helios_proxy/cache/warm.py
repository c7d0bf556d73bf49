"""The warm tier (L2): answers shared by every proxy through Redis, and the invalidations they
send each other.

Redis holds, besides the entries, a generation counter per (database, relation name), one per
database, and an epoch. A write through any proxy increments the counters of what it wrote and
publishes the names on a channel (every proxy drops them from its hot tier). An entry stores the
counters of what it reads as they were *before* its query was sent, read in the same round trip
as the lookup that missed; a lookup fetches the entry and the current counters at once and uses
the entry only if they are equal: a write that committed while a read was in flight can never
leave a stale entry behind (the same rule as the hot tier's, hot.py).

A proxy that loses Redis serves without it (lookups are misses) and reconnects every second. While
it was away it may have missed invalidations, and its own writes did not reach Redis: when it is
back it increments the epoch (every entry stored before is void) and publishes "flush" (every
proxy drops its hot tier), and drops its own.
"""
import json
import logging
import time
import zlib

import gevent

log = logging.getLogger(__name__)
PREFIX = "helios:cache:"
CHANNEL = PREFIX + "invalidate"
EPOCH = PREFIX + "epoch"
RETRY = 1.0
COMPRESS_ABOVE = 1024


def gen_key(database, name):
    return f"{PREFIX}gen:{database}:{name if name is not None else '*'}"


def entry_key(digest):
    return PREFIX + "entry:" + digest.hex()


def encode(rowdesc, body, gens, meta):
    """One Redis value: a JSON header line, then the answer (zlib-compressed above 1 KiB)."""
    payload = (rowdesc or b"") + body
    packed = zlib.compress(payload, 1) if len(payload) > COMPRESS_ABOVE else payload
    head = dict(meta, g=gens, r=len(rowdesc) if rowdesc is not None else -1, z=packed is not payload)
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + packed


def decode(value):
    """(rowdesc, body, gens, meta) of encode()'s value."""
    head, _, packed = value.partition(b"\n")
    meta = json.loads(head)
    payload = zlib.decompress(packed) if meta.pop("z") else packed
    r = meta.pop("r")
    rowdesc, body = (payload[:r], payload[r:]) if r >= 0 else (None, payload)
    return rowdesc, body, meta.pop("g"), meta


class Down(Exception):
    """Redis is not reachable now."""


class WarmTier:
    def __init__(self, url, proxy_id, on_invalidate, on_flush, timeout=0.5):
        import redis  # the [redis] extra (pip install 'helios-proxy[redis]')
        self.redis = redis
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.url = url
        self.id = proxy_id
        self.on_invalidate, self.on_flush = on_invalidate, on_flush
        self.up = False
        self.retry_at = 0.0
        self.lost = False       # it was away: on return, the epoch moves and every proxy flushes
        self.errors = self.reconnects = 0
        self.listener = None
        self.subscribed = False  # hearing other proxies' invalidations now
        self.in_flight = {}     # (database, name) -> writes whose counters are being incremented

    def usable(self):
        return self.up or time.monotonic() >= self.retry_at

    def _failed(self, e):
        self.errors += 1
        if self.up or not self.lost:
            log.warning("redis %s unreachable (%s): serving without the warm tier", self._where(), e)
        self.up, self.lost, self.retry_at = False, True, time.monotonic() + RETRY

    def _where(self):
        return self.url.split("@")[-1]  # (never the password)

    def _call(self, fn):
        if not self.usable():
            raise Down()
        try:
            result = fn()
        except (self.redis.RedisError, OSError) as e:
            self._failed(e)
            raise Down() from e
        if not self.up:
            self._back()
        return result

    def _back(self):
        self.up = True
        if self.lost:
            self.lost = False
            self.reconnects += 1
            log.info("redis %s reachable again: voiding the entries stored before", self._where())
            try:
                self._flush_everywhere()
            except (self.redis.RedisError, OSError) as e:
                self._failed(e)
                raise Down() from e
            self.on_flush()

    # --- entries ---------------------------------------------------------------------------------
    def fetch(self, digest, database, names):
        """(value or None, counters now [epoch, database, names...]); raises Down."""
        keys = [entry_key(digest), EPOCH, gen_key(database, None)] + [gen_key(database, n) for n in names]
        values = self._call(lambda: self.client.mget(keys))
        return values[0], [int(v or 0) for v in values[1:]]

    def store(self, digest, value, ttl):
        try:
            self._call(lambda: self.client.set(entry_key(digest), value, ex=max(1, int(ttl))))
        except Down:
            pass

    def busy(self, database, names):
        """Whether a write to any of names (or the whole database) is still being told to Redis."""
        if not self.in_flight:
            return False
        return (database, None) in self.in_flight or any((database, n) in self.in_flight for n in names)

    def invalidate(self, database, names):
        """A write through this proxy: counters up, other proxies told (names None: the database).
        Runs in a worker greenlet; until it is done, lookups of these names skip this tier."""
        marks = [(database, n) for n in (names if names is not None else (None,))]
        for mark in marks:
            self.in_flight[mark] = self.in_flight.get(mark, 0) + 1
        try:
            def send():
                pipe = self.client.pipeline(transaction=False)
                for _, name in marks:
                    pipe.incr(gen_key(database, name))
                pipe.publish(CHANNEL, json.dumps({"from": self.id, "db": database,
                                                  "names": None if names is None else sorted(names)}))
                pipe.execute()
            self._call(send)
        except Down:
            pass  # (on its return the epoch moves: every entry stored before is void)
        finally:
            for mark in marks:
                left = self.in_flight[mark] - 1
                if left:
                    self.in_flight[mark] = left
                else:
                    del self.in_flight[mark]

    def flush(self):
        """Every entry void (the epoch moves) and every proxy's hot tier dropped."""
        try:
            self._call(self._flush_everywhere)
        except Down:
            pass  # (on its return the epoch moves anyway)

    def _flush_everywhere(self):
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(EPOCH)
        pipe.publish(CHANNEL, json.dumps({"from": self.id, "flush": True}))
        pipe.execute()

    # --- the other proxies' invalidations --------------------------------------------------------
    def start(self):
        self.listener = gevent.spawn(self._listen)

    def stop(self):
        if self.listener is not None:
            self.listener.kill(block=False)

    def _listen(self):
        heard_before = False
        while True:
            pubsub = None
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                pubsub.get_message(timeout=RETRY)  # (the confirmation: subscribed from here on)
                if not self.up:
                    self._back()
                if heard_before:  # what was published while it did not listen is lost: drop it all
                    self.on_flush()
                self.subscribed = heard_before = True
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._heard(message["data"])
            except (self.redis.RedisError, OSError, Down) as e:
                self.subscribed = False
                if not isinstance(e, Down):
                    self._failed(e)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - a dead connection may fail to close
                        pass
            gevent.sleep(RETRY)

    def _heard(self, data):
        try:
            message = json.loads(data)
        except ValueError:
            return
        if message.get("from") == self.id:
            return
        if message.get("flush"):
            self.on_flush()
        elif "db" in message:
            self.on_invalidate(message["db"], message.get("names"))
