"""own_work.OwnWork: the proxy's own transactions, counted per database and per node, and their
connections shut down on a node a switchover's drain gave up waiting for."""
import socket
from types import SimpleNamespace

from helios_proxy.own_work import OwnWork


def conn_to(name):
    a, b = socket.socketpair()
    return SimpleNamespace(node=SimpleNamespace(name=name), sock=a, peer=b)


def test_work_is_counted_per_database_and_node_and_ends_on_its_node():
    own, old, new = OwnWork(), conn_to("primary"), conn_to("standby1")
    flight = object()
    own.begin(flight, "app")  # (a batch waiting for a connection: no node yet)
    assert own.count() == 1 and own.count("app") == 1 and own.count("other") == 0
    assert own.count(node=old.node) == 0
    own.on(flight, old)
    with own.running("other", new):
        assert own.count() == 2 and own.count("other") == 1
        assert own.count(node=old.node) == 1 and own.count(node=new.node) == 1
        own.end_on(old.node)  # the drain gave up: the old primary's work loses its connection
        assert old.peer.recv(10) == b""  # (its peer sees the end)
        new.peer.setblocking(False)
        try:
            new.peer.recv(10)
            raise AssertionError("the other node's connection was shut down too")
        except BlockingIOError:
            pass
    assert own.count() == 1
    own.end(flight)
    own.end(flight)  # (ending twice is harmless)
    assert own.count() == 0
    for c in (old, new):
        c.sock.close()
        c.peer.close()
