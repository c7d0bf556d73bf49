"""relay.ServerStream: the server's bytes walked as far as needed, split anywhere."""
from types import SimpleNamespace

import pytest

from helios_proxy.protocol import codec, messages as m
from helios_proxy.server import plan as p
from helios_proxy.server.relay import ServerStream


def fake_session(mode="transaction"):
    router = SimpleNamespace(count=lambda node, what: None)
    plan = p.ResponsePlan()
    plan.sent(ord("Q"))
    return SimpleNamespace(plan=plan, transactions=0, pooled=True, mode=mode, pinned=None, closing=None,
                           streaming=False, settings_dirty=False, proxy=SimpleNamespace(router=router))


def fake_server():
    return SimpleNamespace(tx_status=b"I", params={}, node=SimpleNamespace(name="n"),
                           statements=SimpleNamespace(names={}))


ANSWER = (codec.message(m.ROW_DESCRIPTION, b"\0\0") + codec.message(m.DATA_ROW, b"\0\1\0\0\0\0010" * 50)
          + codec.parameter_status("TimeZone", "UTC") + codec.message(m.COMMAND_COMPLETE, codec.cstr("SELECT 1"))
          + codec.ready_for_query(b"I"))


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 64, len(ANSWER)])
def test_every_byte_goes_on_and_the_lease_ends_at_the_last_ready_for_query(step):
    session, server = fake_session(), fake_server()
    session.plan.expect(p.QUERY)
    stream, out, ends = ServerStream(session, server), b"", []
    for i in range(0, len(ANSWER), step):
        data, release, _ = stream.feed(ANSWER[i:i + step])
        out += data
        ends.append(release)
    assert out == ANSWER
    assert ends[-1] is True and not any(ends[:-1])
    assert session.plan.outstanding == 0 and not session.plan.owes() and session.transactions == 1
    assert server.params == {"TimeZone": "UTC"} and session.settings_dirty  # a setting changed


def test_session_mode_never_ends_the_lease_and_hidden_answers_are_cut():
    session, server = fake_session("session"), fake_server()
    session.plan.expect(p.ONE, drop=True)  # the proxy's own Parse: its ParseComplete is not the client's
    session.plan.expect(p.QUERY)
    stream = ServerStream(session, server)
    data, release, _ = stream.feed(codec.message(b"1") + ANSWER)
    assert data == ANSWER and release is False
