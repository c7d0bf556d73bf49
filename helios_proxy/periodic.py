"""A background task run every few seconds in its own greenlet; a failing run is logged, never fatal."""
import logging

import gevent

log = logging.getLogger(__name__)


class Periodic:
    """Subclasses implement `tick()` and `interval()` (seconds, read before every wait)."""

    _greenlet = None

    def start(self):
        self._greenlet = gevent.spawn(self._run)

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill()

    def _run(self):
        while True:
            try:
                self.tick()
            except Exception:  # a bug here must not stop the task, nor the proxy
                log.exception("%s failed", type(self).__name__)
            gevent.sleep(self.interval())
