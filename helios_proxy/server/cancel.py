"""The cancel map: the keys the proxy handed to clients, and forwarding a CancelRequest to the right backend.

A CancelRequest's connection is closed only once the backend has taken the request (libpq's
PQcancel returns then, and a cancel that arrived later would hit the client's next query). Each
source address has a budget of cancel requests (a token bucket), and requests that match no
running query are logged as one line per interval, not one line each.
"""
import logging
import random
import time

log = logging.getLogger(__name__)
RATE, BURST = 20.0, 40    # cancel requests per second per source address, and the burst allowed
SEND_TIMEOUT = 5.0        # seconds the cancel connection waits for the backend to take the request
LOG_EVERY = 10.0          # seconds between lines about unmatched or refused requests


class CancelMap:
    def __init__(self):
        self.sessions = {}
        self._random = random.SystemRandom()
        self.budgets = {}     # source address -> (tokens, monotonic time of the last refill)
        self.unmatched = self.refused = 0
        self.logged = 0.0

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
        """Forward a client's CancelRequest to the backend running that session's query, if any;
        return once the backend has taken it."""
        if not self._allowed(peer[0]):
            self.refused += 1
            self._summary()
            return False
        session = self.sessions.get((pid, secret))
        sent = session.cancel() if session is not None else False
        if not sent:
            self.unmatched += 1
            self._summary()
            return False
        log.info("cancel request from %s for session %s", peer[0], session.id)
        if hasattr(sent, "join"):
            sent.join(timeout=SEND_TIMEOUT)
        return True

    def _allowed(self, address):
        now = time.monotonic()
        tokens, last = self.budgets.get(address, (BURST, now))
        tokens = min(BURST, tokens + (now - last) * RATE)
        if len(self.budgets) > 10000:  # forget full buckets: they are the default
            self.budgets = {a: b for a, b in self.budgets.items() if b[0] < BURST}
        if tokens < 1:
            self.budgets[address] = (tokens, now)
            return False
        self.budgets[address] = (tokens - 1, now)
        return True

    def _summary(self):
        now = time.monotonic()
        if now - self.logged >= LOG_EVERY:
            self.logged = now
            log.info("cancel requests matching no running query: %d; refused over the per-address budget "
                     "(%g/s): %d (since the last such line)", self.unmatched, RATE, self.refused)
            self.unmatched = self.refused = 0
