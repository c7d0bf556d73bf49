"""The features that watch the server's answers outside the relay's walk (the cache's writes of a
transaction that ended, [[limits]] concurrency slots, a tenant's errors, prepared statements a
schema change made stale): chosen once per configuration, called by the relay (relay.py) at every
ReadyForQuery and every ErrorResponse; a disabled feature costs nothing there."""
from ..backend.statements import invalidate, stale_plan
from ..limits import release as release_limits


def watchers(proxy):
    """The features that watch the server's answers, built once per configuration (a disabled one
    costs nothing): (at every ReadyForQuery, at every ErrorResponse)."""
    at_ready, at_error = [], []
    if proxy.cache is not None:
        at_ready.append(cache_transaction_ended)
    if proxy.limiter.concurrency:
        at_ready.append(concurrency_ended)
    if proxy.tenants is not None:
        at_error.append(tenant_error)
    if proxy.config.pooled_modes:
        at_error.append(stale_statements)
    return tuple(at_ready), tuple(at_error)


def cache_transaction_ended(session, status):
    """Writes (or settings) of a transaction that ended: invalidated again (cache/)."""
    state = session.cache_state
    if status == b"I" and state is not None and (state.pending is not None or state.tx_unsafe):
        session.proxy.cache.ended(session, not session.plan.owes())


def concurrency_ended(session, status):
    """[[limits]] concurrency: the session's queries ended, its slots go back."""
    if session.limits_held and not session.plan.owes():
        release_limits(session)


def tenant_error(session, server, body):
    if session.identity.tenant is not None:
        session.identity.tenant.answered_error()


def stale_statements(session, server, body):
    """Shared prepared statements outlived a schema change: re-parsed at their next use."""
    if session.identity.pooled and stale_plan(body):
        invalidate(list(server.statements.names))
