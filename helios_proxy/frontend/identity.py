"""Who a client session is: set by the login (handshake.py, auth.py for its claims), then read-only.
A database that moves to a host of its own on a reload changes `home` (LeaseSlot.acquire_primary)."""
import time


class Identity:
    __slots__ = ("id", "peer", "local", "tls", "user", "database", "mode", "pooled", "tenant", "auth_claims",
                 "home", "secret", "backend_pid", "admin", "authenticated", "started")

    def __init__(self, session_id, peer, local=False):
        self.id = session_id
        self.peer = peer              # (address, port) of the client
        self.local = local            # on the Unix socket: no TLS, none needed
        self.tls = False
        self.user = self.database = None
        self.mode = "session"         # pool mode, known once user and database are (handshake)
        self.pooled = False           # transaction/statement: leases end with each transaction
        self.tenant = None            # its tenant (tenancy/)
        self.auth_claims = None       # the claims of the JWT it logged in with (auth/jwt.py)
        self.home = None              # the node of a database with a host of its own ([databases.NAME])
        self.secret = 0               # its cancel key's secret
        self.backend_pid = 0          # the pid in the BackendKeyData the client got
        self.admin = False            # in the virtual admin database (admin_db.py)
        self.authenticated = False    # past authentication (proxy.py's per-address budget)
        self.started = time.monotonic()
