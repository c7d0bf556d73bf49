"""sockets.Writer: everything for one client in order, from callbacks and greenlets, with backpressure."""
import gevent
import pytest
from gevent import socket

from helios_proxy.sockets import Writer


def reader(sock, total):
    got = bytearray()
    while len(got) < total:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_what_the_kernel_does_not_take_waits_in_order_and_drains_when_read():
    ours, theirs = socket.socketpair()
    writer, drained = Writer(ours), []
    big = bytes(range(256)) * 40000  # ~10 MB: more than the socket buffers hold
    writer.write(big)  # never waits (a loop callback may call it)
    assert writer.backlog
    writer.on_drained = lambda: drained.append(True)
    writer.write(b"tail")  # queued behind, in order
    got = gevent.spawn(reader, theirs, len(big) + 4)
    assert got.get(timeout=10) == big + b"tail"
    gevent.sleep(0.05)
    assert drained == [True] and not writer.backlog


def sender_behind_a_backlog(last):
    """A Writer with 5 MB the peer has not read, and a greenlet sending `last` after them."""
    ours, theirs = socket.socketpair()
    writer = Writer(ours)
    writer.write(b"x" * 5_000_000)
    sender = gevent.spawn(writer.send, last)
    gevent.sleep(0.05)
    return theirs, sender


def test_a_greenlet_send_waits_until_its_bytes_are_out():
    theirs, sender = sender_behind_a_backlog(b"end")
    assert not sender.ready()  # still behind the backlog
    got = gevent.spawn(reader, theirs, 5_000_003)
    assert got.get(timeout=10).endswith(b"end")
    sender.get(timeout=5)


def test_a_client_that_is_gone_is_reported_to_whoever_waits():
    theirs, sender = sender_behind_a_backlog(b"more")
    theirs.close()
    with pytest.raises(OSError):
        sender.get(timeout=5)
