"""A request the fast path took that waits in its pool's line (frontend/fastpath.py: more clients
than server connections), without its session's greenlet."""
import time

from gevent.hub import get_hub


class Queued:
    """A request the fast path took that waits in its pool's line (more clients than server
    connections): Pool.release() hands it a connection in turn (set), and it goes on in a loop
    callback; a cancel (set_exception) or the pool's acquire_timeout refuses it."""
    __slots__ = ("fast", "pool", "target", "data", "go", "args", "timer", "done", "started")

    def __init__(self, fast, pool, target, data, go, args):
        self.fast, self.pool, self.target, self.data, self.go, self.args = fast, pool, target, data, go, args
        self.done, self.started = False, time.monotonic()
        self.timer = get_hub().loop.timer(pool.config.pool.acquire_timeout)
        self.timer.start(self.expired)
        pool.line_up(self)

    def ready(self):
        return self.done

    def set(self, server):  # (None: room to open a connection, Pool._wake_one)
        self.done = True
        self.timer.stop()
        get_hub().loop.run_callback(self.fast.dequeued, self, server)

    def set_exception(self, error):  # (LeaseSlot.cancel, from the cancel's greenlet)
        get_hub().loop.run_callback(self.finish, error)

    def expired(self):
        self.finish(self.pool.timed_out())

    def finish(self, error):
        if not self.done:
            self.leave()
            self.fast.refused(self, error)

    def leave(self):
        self.done = True
        self.timer.stop()
        self.pool.leave_line(self)
