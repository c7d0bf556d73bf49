"""What the proxy knows about a user's secret, and how it turns that into a backend login."""
from dataclasses import dataclass

from ..protocol.scram import ScramSecret


@dataclass
class Credentials:
    user: str
    password: str = None        # plaintext, when known
    md5: str = None             # 'md5' + md5(password + user)
    scram: ScramSecret = None   # a stored SCRAM secret
    client_key: bytes = None    # recovered from a client's SCRAM proof (SCRAM passthrough)
    partition: str = None       # a tenant with a pool of its own (tenancy/ pool_size): pools keyed by it too
    login: str = None           # the name the client logged in as, when not user (user.tenant): md5 salts with it

    @classmethod
    def from_secret(cls, user, secret):
        """Classify a userlist/pg_shadow secret: md5..., SCRAM-SHA-256$..., or plaintext. An empty
        one is none at all: PostgreSQL refuses empty passwords too."""
        if not secret:
            return cls(user)
        if len(secret) == 35 and secret.startswith("md5"):
            return cls(user, md5=secret)
        scram = ScramSecret.parse(secret) if secret.startswith("SCRAM-SHA-256$") else None
        if scram:
            return cls(user, scram=scram)
        return cls(user, password=secret)

    @property
    def known(self):
        return bool(self.password is not None or self.md5 or self.scram)

    def __repr__(self):  # never show secrets in logs or tracebacks
        return f"Credentials(user={self.user!r}, known={self.known})"
