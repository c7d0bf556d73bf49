"""Socket helpers shared by the client and server sides."""
import socket

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.lock import Semaphore

from .speedups import write


def sendall(sock, data):
    """Like sock.sendall, in one send() when the kernel takes it all (the usual case).

    gevent's sendall() asks the kernel for SO_SNDBUF on every call to size its chunks: one extra
    system call per message batch on the hot path (about 10% of the proxy's CPU when measured).
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # an int: IntFlag's | costs 0.5 us per call


def peek(sock):
    """What the kernel holds unread for a plain gevent socket, without waiting and without
    consuming it: one byte, b"" at EOF, or None when nothing has arrived."""
    try:  # the real socket underneath: gevent's recv() would wait on EAGAIN
        return sock._sock.recv(1, PEEK_NOW)
    except (BlockingIOError, InterruptedError):
        return None


# One receive buffer for the whole process. recv(65536) allocates 64 KiB per call, which glibc
# served with an mmap + munmap pair per transaction (measured with strace: ~20 us of the proxy's
# ~90 us of CPU per pgbench transaction). Sharing one buffer is safe under gevent: nothing can switch
# greenlets between the kernel filling it and recv() copying the bytes out.
_SCRATCH = memoryview(bytearray(1 << 16))


def recv(sock):
    """Up to 64 KiB from sock as bytes (b"" at EOF), waiting cooperatively like sock.recv."""
    n = sock.recv_into(_SCRATCH)
    return _SCRATCH[:n].tobytes()


def plain(sock):
    """A plain gevent socket (not TLS, whose object may hold decrypted bytes the kernel does not
    see): waiting for the kernel to report it readable is then enough."""
    return type(sock) is gsocket.socket


def recv_later(sock):
    """recv() on a socket whose peer cannot have sent anything yet (it waits for our answer):
    wait until it is readable first, saving the read the kernel would answer EAGAIN (a system call
    and a Python exception). TLS sockets may hold decrypted bytes: they read at once."""
    if plain(sock):
        sock._wait(sock._read_event)
    return recv(sock)


# --- the callback side: raw io watchers on gevent's loop (frontend/relay.py) ---------------------
# Inside a lease, bytes move from callbacks of io watchers on gevent's own loop, with no greenlet
# switch per event. A callback must never wait: these helpers read and write without blocking.
READ, WRITE = 1, 2


def watcher(sock, events=READ):
    """A libev io watcher on sock's descriptor (start(callback) / stop() / close())."""
    return gevent.get_hub().loop.io(sock.fileno(), events)


# The loop callbacks' reads and writes use speedups.read and speedups.write on the kernel socket's
# descriptor (os.read and os.write, or the compiled helper's: a third of the instructions of
# socket.recv_into and socket.send, whose arguments CPython parses the old way).


def in_hub():
    """Whether the caller runs in a loop callback (where nothing may wait), not in a greenlet."""
    return gevent.getcurrent() is gevent.get_hub()


class Writer:
    """Everything the proxy sends one client, in order, from greenlets and loop callbacks alike.

    write() never waits: what the kernel does not take now waits here and goes out when the socket
    is writable again (a write watcher). Whoever produces a lot (the server-to-client pump) asks
    `backlog` and stops reading its source until `on_drained` is called, so a slow client costs
    the proxy no memory. A greenlet calling send() waits until its bytes are out, as sendall()
    would. TLS sockets (whose writes cannot be retried byte-exact) are written with sendall() by
    greenlets only; loop callbacks never serve them."""
    __slots__ = ("sock", "raw", "lock", "pending", "waiters", "on_drained", "_watcher", "error", "silent")

    def __init__(self, sock):
        self.sock = sock
        self.raw = sock._sock if plain(sock) else None
        self.lock = Semaphore() if self.raw is None else None  # TLS: one sendall at a time
        self.pending = ()         # bytes not taken by the kernel yet, in order (a list once there are)
        self.waiters = ()         # greenlets' Events set once pending is empty (a list once there are)
        self.on_drained = None    # callable, once: the pump that paused for the backlog
        self._watcher = None
        self.error = None         # the OSError that ended writing, if any
        self.silent = False       # a FATAL went out (or TLS is being negotiated): no more messages to the client

    @property
    def backlog(self):
        return bool(self.pending)

    def write(self, data):
        """Queue data for the client; sent now as far as the kernel takes it. Raises the OSError
        of a client that is gone."""
        if self.error is not None:
            raise self.error
        if self.raw is None:
            with self.lock:
                sendall(self.sock, data)
            return
        if self.pending:
            self.pending.append(bytes(data))
            return
        try:
            sent = write(self.raw.fileno(), data)  # (speedups.write: cheaper than socket.send)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self.error = e
            raise
        if sent < len(data):
            self.pending = [bytes(memoryview(data)[sent:])]
            if self._watcher is None:
                self._watcher = watcher(self.sock, WRITE)
            self._watcher.start(self._writable)

    def send(self, data):
        """write(), then wait (in a greenlet) until the client's socket took everything queued."""
        self.write(data)
        if self.pending and not in_hub():
            done = Event()
            self.waiters = [*self.waiters, done]
            done.wait()
            if self.error is not None:
                raise self.error

    def _writable(self):
        try:
            while self.pending:
                chunk = self.pending[0]
                sent = self.raw.send(chunk)
                if sent < len(chunk):
                    self.pending[0] = chunk[sent:]
                    return
                self.pending.pop(0)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # the client is gone: whoever waits hears it
            self.error = e
            self.pending = ()
        self._watcher.stop()
        self._drained()

    def _drained(self):
        waiters, self.waiters = self.waiters, ()
        for done in waiters:
            done.set()
        resume, self.on_drained = self.on_drained, None
        if resume is not None:
            resume()

    def close(self):
        """The session ends: stop the watcher and let no one wait on bytes that will not go."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None
        if self.pending and self.error is None:
            self.error = BrokenPipeError("the session ended")
        self.pending = ()
        self._drained()


def wake_when_readable(sock, callback, *args):
    """Arm sock's own read watcher (gevent's) to call callback(*args) once sock is readable;
    returns it, to be stopped after (frontend/relay.py parks its greenlet pumps on it)."""
    event = sock._read_event
    event.start(callback, *args)
    return event


def call_soon(callback, *args):
    """callback(*args) from the loop at its next turn (as a socket's watcher would call it)."""
    gevent.get_hub().loop.run_callback(callback, *args)
