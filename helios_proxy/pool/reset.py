"""Hardening before reuse: a server connection a client leaves goes back to its pool only in a known,
clean state (no request in flight, no transaction, session reset); anything else is closed."""
import logging

from ..protocol import messages as m
from . import session_state

log = logging.getLogger(__name__)


def reset_for_reuse(server, reset_query, in_flight, full_reset):
    """Make server reusable after its client left; return whether it is.

    in_flight: the client left with requests unanswered or an extended batch without Sync.
    full_reset: run reset_query (session pooling, a pinned client, changed settings); otherwise
    only the client's session settings are undone.
    """
    if server.broken:
        return False
    if in_flight:
        server.cancel()  # stop the orphaned query now, not when it next writes to a closed socket
        return False
    try:
        if server.tx_status != m.TX_IDLE:
            server.execute("ROLLBACK")
        if full_reset and reset_query:
            server.execute(reset_query)
            if " ".join(reset_query.upper().split()).rstrip(";") != "DISCARD ALL":
                server.execute(session_state.RESET)  # a custom reset_query must not leave an identity
            server.settings_key = ()
            server.statements.clear()
        else:
            session_state.apply(server, {})
        return server.tx_status == m.TX_IDLE
    except Exception as e:  # whatever went wrong, the caller closes it and the pool gets its slot back
        log.info("reset of %r failed (%s); closing it", server, e)
        return False
