"""A background task run every few seconds in its own greenlet; a failing run is logged, never fatal."""
import logging

import gevent

log = logging.getLogger(__name__)


class Periodic:
    """Subclasses implement `tick()` and `interval()` (seconds, read before every wait)."""

    _greenlet = None

    def start(self, wait_first=False):
        """wait_first: the first run after one interval (the caller just did one)."""
        self._greenlet = gevent.spawn(self._run, wait_first)

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill()

    def _run(self, wait_first=False):
        if wait_first:
            gevent.sleep(self.interval())
        while True:
            try:
                self.tick()
            except Exception:  # a bug here must not stop the task, nor the proxy
                log.exception("%s failed", type(self).__name__)
            gevent.sleep(self.interval())
