"""A wait a client's cancel can end: what a session's request waits on between its arrival and its
server (RESUME after PAUSE, a limit's room), told to the session (`LeaseSlot.wait_on`), whose
CancelRequest sets the told result's exception (LeaseSlot.cancel): raised here, the wait over.
(A pool's line, a batch's row and the fast path's line are waited on as they are: they take the
cancel themselves, `set_exception`.)"""
import gevent
from gevent.event import AsyncResult


def wait_cancelable(waiting, events=(), timeout=None):
    """Until the first of events (gevent waitables) is ready or timeout seconds passed; waiting:
    the session's LeaseSlot.wait_on (None: no cancel reaches this wait)."""
    if waiting is None:
        gevent.wait(events, timeout, count=1) if events else gevent.sleep(timeout)
        return
    canceled = AsyncResult()
    waiting(canceled)
    try:
        gevent.wait((*events, canceled), timeout, count=1)
    finally:
        waiting(None)
    if canceled.ready():
        raise canceled.exception
