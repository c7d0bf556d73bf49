"""Work that may wait, handed over by code that must not: loop callbacks (frontend/relay.py's pump)
submit it here and long-lived greenlets run it in order of submission.

A new greenlet per job would cost an mmap + munmap pair for its stack every time (measured at a
fifth of the proxy's CPU per pooled transaction when the pump was a greenlet); these workers are
kept and reused, and a new one is started only when every worker is busy (e.g. waiting for a
server's answer).
"""
import logging
from collections import deque

import gevent
from gevent.event import Event

log = logging.getLogger(__name__)


class Jobs:
    def __init__(self):
        self.queue = deque()
        self.idle = []       # Events of workers waiting for work
        self.workers = 0

    def submit(self, fn, *args):
        """Run fn(*args) soon in a greenlet; never waits, callable from a loop callback."""
        self.queue.append((fn, args))
        if self.idle:
            self.idle.pop().set()
        else:
            self.workers += 1
            gevent.spawn(self._work)

    def _work(self):
        wake = Event()
        try:
            while True:
                while self.queue:
                    fn, args = self.queue.popleft()
                    try:
                        fn(*args)
                    except Exception:  # one job's bug must not stop the others
                        log.exception("%s failed", getattr(fn, "__qualname__", fn))
                wake.clear()
                self.idle.append(wake)
                wake.wait()
        finally:
            self.workers -= 1
            if wake in self.idle:
                self.idle.remove(wake)


JOBS = Jobs()
