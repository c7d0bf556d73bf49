"""Limit state shared by the workers (`[server] workers > 1`): one table in a file that the arbiter
creates in its private run directory and every worker maps (MAP_SHARED), so that a limit holds for
a key whichever workers its clients landed on, and one connection alone gets the whole rate.

The table has SLOTS fixed slots of five numbers: the key's hash (limit name, kind and key value;
0 = free), three numbers whose meaning is the limit kind's, and when the slot was last touched
(CLOCK_MONOTONIC is one clock for every process). A key lives in the first free or matching slot of
a short probe run from its hash; a full run gives up its least recently touched slot (a key not
seen for a while starts afresh), never a concurrency slot with queries running.

Every read-modify-write holds an exclusive flock on the file, taken without blocking the loop
(LOCK_NB, retried after a yield); the work under it is a few microseconds of struct packing.

Concurrency slots are kept per key *and worker* (the running count is the sum over the workers),
so that a worker that dies and is restarted zeroes its own counts instead of leaking them.
"""
import fcntl
import hashlib
import mmap
import os
import struct
import time
from contextlib import contextmanager

import gevent

from . import Limit
from ..sockets import in_hub

SLOT = struct.Struct("<Qdddd")  # hash, a, b, c, touched
SLOTS = 16384
PROBE = 16
FILE_NAME = "limits.shm"


def create(rundir):
    """The arbiter's part: a zeroed table in rundir (mode 0700); returns its path."""
    path = os.path.join(rundir, FILE_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, SLOT.size * SLOTS)
    finally:
        os.close(fd)
    return path


def key_hash(*parts):
    h = int.from_bytes(hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest(), "little")
    return h or 1


class SharedTable:
    def __init__(self, path, worker, workers):
        self.worker, self.workers, self.path = worker, workers, path
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, SLOT.size * SLOTS)
        self.overflows = 0  # takes that found no slot (a full probe run of busy concurrency slots)

    @contextmanager
    def locked(self):
        """Nothing under the lock yields, so a holder lets go within microseconds. A greenlet retries
        after a yield; the loop itself (a relay callback ending a query releases its slot) cannot
        yield, so it waits those microseconds in flock."""
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if in_hub():
                    fcntl.flock(self.fd, fcntl.LOCK_EX)
                    break
                gevent.sleep(0)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def slot(self, h, now, create=True):
        """The offset of key hash h's slot (under the lock), taken or made; None when there is none."""
        start = h % SLOTS
        free = oldest = None
        for i in range(PROBE):
            off = ((start + i) % SLOTS) * SLOT.size
            held, a, _b, c, touched = SLOT.unpack_from(self.map, off)
            if held == h:
                return off
            if held == 0:
                free = off if free is None else free
            elif not (c < 0 and a > 0) and (oldest is None or touched < oldest[1]):  # (c < 0: running queries)
                oldest = (off, touched)
        if not create:
            return None
        off = free if free is not None else oldest[0] if oldest is not None else None
        if off is None:
            self.overflows += 1
            return None
        SLOT.pack_into(self.map, off, h, 0.0, 0.0, 0.0, now)
        return off

    def read(self, off):
        return SLOT.unpack_from(self.map, off)[1:4]

    def write(self, off, h, a, b, c, now):
        SLOT.pack_into(self.map, off, h, a, b, c, now)

    # --- concurrency: one slot per key and worker, c = -(worker + 1) marks them ---------------
    def worker_hash(self, h, worker):
        return key_hash(str(h), str(worker))

    def running(self, h, now):
        total = 0
        for w in range(self.workers):
            off = self.slot(self.worker_hash(h, w), now, create=False)
            if off is not None:
                total += self.read(off)[0]
        return total

    def add_running(self, h, delta, now):
        mine = self.worker_hash(h, self.worker)
        off = self.slot(mine, now)
        if off is None:
            return False
        a = max(0.0, self.read(off)[0] + delta)
        self.write(off, mine, a, 0.0, -(self.worker + 1.0), now)
        return True

    def forget_worker(self):
        """At a worker's start: the concurrency counts a dead predecessor left are nobody's."""
        mark = -(self.worker + 1.0)
        with self.locked():
            for i, (h, _a, _b, c, touched) in enumerate(SLOT.iter_unpack(self.map)):
                if h and c == mark:
                    SLOT.pack_into(self.map, i * SLOT.size, h, 0.0, 0.0, c, touched)


class SharedLimit(Limit):
    """A [[limits]] entry whose state lives in the workers' shared table. Its own `state` only
    remembers which keys this worker saw (value -> hash), for /limits."""

    POLL_S = 0.005  # a concurrency waiter looks again this often (the line spans processes)

    def __init__(self, cfg, table):
        super().__init__(cfg)
        self.table = table

    def _hash(self, value):
        h = self.state.get(value)
        if h is None:
            h = self._state(value, lambda: key_hash(self.name, self.kind, self.key, value))
        return h

    def wait_s(self, value, now, n=1):
        cfg, table, h = self.cfg, self.table, self._hash(value)
        with table.locked():
            if self.kind == "concurrency":
                if table.running(h, now) < cfg.max:
                    table.add_running(h, 1, now)
                    return 0
                return self.POLL_S
            off = table.slot(h, now)
            if off is None:
                return 0  # no room in the table: let it pass (counted in overflows)
            a, b, c = table.read(off)
            if self.kind == "token_bucket":  # a = tokens, b = when they were counted
                tokens = cfg.burst if b == 0 else min(cfg.burst, a + (now - b) * cfg.rate)
                n = min(n, cfg.burst)
                wait = 0 if tokens >= n else (n - tokens) / cfg.rate
                table.write(off, h, tokens - (n if wait == 0 else 0), now, 0.0, now)
                return wait
            # sliding window, as two counters: a = this window's start, b = its count, c = the last
            # window's; the estimate weighs the last window by how much of it still overlaps
            w = cfg.window_s
            a, b, c = rolled(a, b, c, now, w)
            n = min(n, cfg.max_queries)
            if c * (1 - (now - a) / w) + b + n - 1 < cfg.max_queries:
                table.write(off, h, a, b + n, c, now)
                return 0
            table.write(off, h, a, b, c, now)
            return max(0.001, min(a + w - now, w / 20))

    def release(self, value):
        with self.table.locked():
            self.table.add_running(self._hash(value), -1, time.monotonic())

    def levels(self, top=20):
        cfg, table, now, out = self.cfg, self.table, time.monotonic(), {}
        with table.locked():
            for value, h in list(self.state.items())[-top:]:
                if self.kind == "concurrency":
                    out[value] = table.running(h, now)
                    continue
                off = table.slot(h, now, create=False)
                if off is None:
                    continue
                a, b, c = table.read(off)
                if self.kind == "token_bucket":
                    out[value] = round(min(cfg.burst, a + (now - b) * cfg.rate), 2)
                else:
                    a, b, c = rolled(a, b, c, now, cfg.window_s)
                    out[value] = round(c * (1 - (now - a) / cfg.window_s) + b, 2)
        return out


def rolled(start, count, last, now, w):
    """A sliding window's two counters moved on to the window that holds now."""
    if start == 0:
        return now, 0.0, 0.0
    if now - start >= w:
        windows = (now - start) // w
        return start + windows * w, 0.0, count if windows == 1 else 0.0
    return start, count, last
