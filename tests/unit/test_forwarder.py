"""The Forwarder's handlers alone (frontend/forward.py), on a session made of the real parts and a
server connection that records what it is sent: runs of messages go out as they came, in one send;
what the proxy answers, refuses or ends cuts the run. End to end: tests/test_differential.py."""
from types import SimpleNamespace

import pytest

from helios_proxy.config import load
from helios_proxy.errors import ProtocolViolation
from helios_proxy.frontend.forward import Forwarder
from helios_proxy.frontend.identity import Identity
from helios_proxy.frontend.lease_slot import LeaseSlot
from helios_proxy.frontend.plan import ResponsePlan
from helios_proxy.pool.lease import Lease
from helios_proxy.pool.prepared import StatementBook
from helios_proxy.pool.session_state import SessionSettings
from helios_proxy.protocol import codec
from helios_proxy.protocol.framing import MessageBuffer
from helios_proxy.routing.state import RouteState
from helios_proxy.stats import Counters


class Server:
    def __init__(self):
        self.sent, self.unnamed_owner, self.tx_status = [], None, b"I"

    def send(self, data):
        self.sent.append(bytes(data))


def forwarder(**pipeline):
    config = load({"nodes": [{"name": "a"}], "pipeline": pipeline}, environ={})
    server, to_client = Server(), []
    proxy = SimpleNamespace(config=config, stages=(), cache=None, admission=SimpleNamespace(on=False))
    session = SimpleNamespace(proxy=proxy, identity=Identity(1, ("127.0.0.1", 1)), plan=ResponsePlan(),
                              statements=StatementBook(), route=RouteState(), settings=SessionSettings(),
                              counters=Counters(), journal=None, cache_state=None, limits_held=[], server=server,
                              writer=SimpleNamespace(raw=None),  # (no plain socket: no fast path)
                              send=to_client.append)
    session.slot = LeaseSlot(session)
    session.slot.lease = Lease(session, None, server)  # (session pooling: the login's lease goes on)
    return Forwarder(session), server, to_client


def feed(fwd, data):
    buf = MessageBuffer(1 << 30)
    buf.feed(bytearray(data))
    return fwd.forward(buf)


def batch(sql):
    return (codec.message(b"P", b"\0" + sql.encode() + b"\0\0\0") + codec.message(b"B", b"\0\0\0\0\0\0")
            + codec.message(b"E", b"\0\0\0\0\0") + codec.message(b"S"))


def test_a_pipeline_of_queries_and_a_batch_goes_out_as_it_came_in_one_send():
    fwd, server, to_client = forwarder()
    data = codec.query("select 1") + codec.query("select 2") + batch("select $1")
    assert feed(fwd, data) is True
    assert server.sent == [data] and to_client == []
    plan = fwd.session.plan
    assert plan.outstanding == 3 and fwd.session.counters.queries == 3  # two Queries and a Sync owed, 3 executions


def test_a_message_type_no_client_may_send_ends_the_session_after_what_came_before_went_out():
    fwd, server, _ = forwarder()
    with pytest.raises(ProtocolViolation) as e:
        feed(fwd, codec.query("select 1") + codec.message(b"Z", b"I"))
    assert server.sent == [codec.query("select 1")] and e.value.sqlstate == "08P01"


def test_terminate_ends_the_run_and_nothing_after_it_goes_out():
    fwd, server, _ = forwarder()
    assert feed(fwd, codec.query("select 1") + codec.message(b"X") + codec.query("select 2")) is False
    assert server.sent == [codec.query("select 1")]


def test_a_query_over_max_query_bytes_is_refused_and_the_others_go_on():
    fwd, server, to_client = forwarder(max_query_bytes=100)
    big = codec.query("select '" + "x" * 200 + "'")
    feed(fwd, codec.query("select 1") + big + codec.query("select 2"))
    assert server.sent == [codec.query("select 1"), codec.query("select 2")]  # (the refused one cut out)
    plan = fwd.session.plan  # the server answers select 1: the refusal follows, in the client's order
    plan.on_message(ord("C"), b"SELECT 1\0")
    drop, after = plan.on_message(ord("Z"), b"I")
    assert not drop and b"54000" in after and b"max_query_bytes" in after and after.endswith(codec.ready_for_query(b"I"))
    assert to_client == []


def test_a_failed_replays_error_goes_to_the_next_request_only():
    from helios_proxy.continuity.journal import Journal
    fwd, server, to_client = forwarder()
    journal = fwd.session.journal = Journal(1 << 20)
    error = codec.error_response("40001", "the transaction was lost in a failover")
    journal.fail_next(error)
    try:
        feed(fwd, codec.query("select 1") + codec.query("select 2"))
    finally:
        journal.close()
    assert to_client == [error + codec.ready_for_query(b"I")]  # (it was owed nothing: answered at once)
    assert server.sent == [codec.query("select 2")] and journal.pending_error is None
