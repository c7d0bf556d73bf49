"""The cancel map: the keys the proxy handed to clients, and forwarding a CancelRequest to the right backend.

A CancelRequest's connection is closed only once the backend has taken the request (libpq's
PQcancel returns then, and a cancel that arrived later would hit the client's next query). Each
source address has a budget of cancel requests (a token bucket), and requests that match no
running query are logged as one line per interval, not one line each.

A key names its owner, so that a request landing elsewhere reaches it: with several workers the
secret's low byte is the worker's index (handed over on a Unix socket in the arbiter's rundir); in
a fleet coordinated through etcd the next byte is the member's peer id (as PgBouncer's peering),
and the request is sent on, as the CancelRequest it is, to that member's advertised address.
"""
import logging
import os
import random
import struct
import time

import gevent
from gevent import socket
from gevent.server import StreamServer

log = logging.getLogger(__name__)
OWNER_BITS = 0xFF         # with several workers, a secret's low byte names the worker that owns it
PEER_SHIFT = 8            # in a fleet, the next byte names the member (its peer id, 1-255)
CANCEL_REQUEST = struct.Struct("!IIii")  # length 16, the cancel code, pid, secret
CANCEL_CODE = 80877102
FORWARD = struct.Struct("!iiB")  # a forwarded cancel: pid, secret, length of the source address
RATE, BURST = 20.0, 40    # cancel requests per second per source address, and the burst allowed
SEND_TIMEOUT = 5.0        # seconds the cancel connection waits for the backend to take the request
LOG_EVERY = 10.0          # seconds between lines about unmatched or refused requests


class CancelMap:
    def __init__(self, index=0, count=1, rundir=None):
        """index, count: this worker and how many there are (server.workers); rundir: where the
        workers' cancel sockets are (the arbiter's private directory)."""
        self.index, self.count, self.rundir = index, count, rundir
        self.server = None
        self.peer_id = 0      # this member's number in a fleet (set by fleet_dcs.py once claimed)
        self.fleet = None     # the FleetCoordinator: where another member's peer id is reached
        self.forwarded = self.to_members = 0
        self.sessions = {}
        self._random = random.SystemRandom()
        self.budgets = {}     # source address -> (tokens, monotonic time of the last refill)
        self.unmatched = self.refused = 0
        self.logged = 0.0

    def register(self, session, pid):
        """Give `session` a key (pid as the client sees it, fresh random secret); return the secret."""
        while True:
            secret = self._random.randint(-2**31, 2**31 - 1)
            if self.count > 1:  # (the low byte names this worker: a cancel arriving elsewhere finds it)
                secret = (secret & ~OWNER_BITS) | self.index
            if self.fleet is not None:  # (the next byte: this member; 0 until its peer id is claimed)
                secret = (secret & ~(0xFF << PEER_SHIFT)) | (self.peer_id << PEER_SHIFT)
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
        if session is None and self.fleet is not None:
            peer_id = (secret >> PEER_SHIFT) & 0xFF
            if peer_id and peer_id != self.peer_id:
                return self.to_member(peer_id, pid, secret)  # another member's client
        owner = secret & OWNER_BITS
        if session is None and self.count > 1 and owner != self.index and owner < self.count:
            return self.forward(owner, pid, secret, peer)  # another worker's client
        return self.deliver(session, peer)

    def deliver(self, session, peer):
        """Cancel session's query (None: no such session); True once its backend took the request."""
        sent = session.slot.cancel() if session is not None else False
        if not sent:
            self.unmatched += 1
            self._summary()
            return False
        log.info("cancel request from %s for session %s", peer[0], session.identity.id)
        if hasattr(sent, "join"):
            sent.join(timeout=SEND_TIMEOUT)
        return True

    # --- several workers: a CancelRequest lands on any of them (the kernel spreads connections) ----
    def socket_path(self, index):
        return os.path.join(self.rundir, f"cancel-{index}.sock")

    def serve(self):
        """A worker: take cancels the other workers forward (on a Unix socket in the private rundir)."""
        if self.count <= 1 or self.rundir is None:
            return
        path = self.socket_path(self.index)
        if os.path.exists(path):
            os.unlink(path)  # (a restarted worker's predecessor left it)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(128)
        self.server = StreamServer(listener, self._forwarded)
        self.server.start()

    def stop(self):
        if self.server is not None:
            self.server.close()
            self.server = None

    def _forwarded(self, conn, _address):
        try:
            with gevent.Timeout(SEND_TIMEOUT + 1):
                head = _read(conn, FORWARD.size)
                pid, secret, length = FORWARD.unpack(head)
                address = _read(conn, length).decode("utf-8", "replace")
                done = self.deliver(self.sessions.get((pid, secret)), (address, 0))
                conn.sendall(b"1" if done else b"0")
        except (OSError, gevent.Timeout, struct.error) as e:
            log.info("a forwarded cancel request failed: %s", e)
        finally:
            conn.close()

    def forward(self, owner, pid, secret, peer):
        """Hand the request to the worker that owns the key; True once its backend took it."""
        address = str(peer[0]).encode()[:255]
        try:
            with gevent.Timeout(SEND_TIMEOUT + 2):
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    conn.connect(self.socket_path(owner))
                    conn.sendall(FORWARD.pack(pid, secret, len(address)) + address)
                    answer = conn.recv(1)  # (after the owner's backend took it: only then is the client answered)
                finally:
                    conn.close()
        except (OSError, gevent.Timeout) as e:
            log.info("cancel request for worker %d could not be handed over: %s", owner, e)
            return False
        self.forwarded += 1
        return answer == b"1"

    def to_member(self, peer_id, pid, secret):
        """Send the request on to the fleet member with peer_id; True once it took it (it closes
        the connection only after its backend took the request)."""
        address = self.fleet.address_of(peer_id)
        if address is None:
            self.unmatched += 1
            self._summary()
            return False
        host, _, port = address.rpartition(":")
        try:
            with gevent.Timeout(SEND_TIMEOUT + 2):
                conn = socket.create_connection((host.strip("[]"), int(port)), timeout=SEND_TIMEOUT)
                try:
                    conn.sendall(CANCEL_REQUEST.pack(16, CANCEL_CODE, pid, secret))
                    while conn.recv(64):
                        pass
                finally:
                    conn.close()
        except (OSError, ValueError, gevent.Timeout) as e:
            log.info("cancel request for fleet member %d (%s) could not be handed over: %s", peer_id, address, e)
            return False
        self.to_members += 1
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


def _read(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("the other worker closed the connection")
        data += chunk
    return data
