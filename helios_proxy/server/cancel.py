"""The cancel map: the keys the proxy handed to clients, and forwarding a CancelRequest to the right backend."""
import logging
import random

log = logging.getLogger(__name__)


class CancelMap:
    def __init__(self):
        self.sessions = {}
        self._random = random.SystemRandom()

    def register(self, session, pid):
        """Give `session` a key (pid as the client sees it, fresh random secret); return the secret."""
        while True:
            secret = self._random.randint(-2**31, 2**31 - 1)
            if (pid, secret) not in self.sessions:
                self.sessions[(pid, secret)] = session
                return secret

    def unregister(self, pid, secret):
        self.sessions.pop((pid, secret), None)

    def cancel(self, pid, secret, peer):
        """Forward a client's CancelRequest to the backend running that session's query, if any."""
        session = self.sessions.get((pid, secret))
        if session is None or not session.cancel():
            log.info("cancel request from %s matches no running query", peer)
            return False
        log.info("cancel request from %s for session %s", peer, session.id)
        return True
