"""Key derivation (PBKDF2 for SCRAM) off the event loop, with a cap on the iteration count.

hashlib.pbkdf2_hmac releases the GIL, so in gevent's thread pool it costs the other clients no
stall; a count above `auth.max_scram_iterations` (a rogue or intercepting server asking for
millions) is refused instead of computed.
"""
from gevent import get_hub

from ..errors import PROTOCOL_VIOLATION, BackendError
from ..protocol.scram import salted_password


def derive(password, salt, iterations, cap, who="server"):
    if iterations > cap:
        raise BackendError(f"{who} asks for {iterations} SCRAM iterations; refused (auth.max_scram_iterations "
                           f"= {cap})", sqlstate=PROTOCOL_VIOLATION)
    return get_hub().threadpool.apply(salted_password, (password, salt, iterations))
