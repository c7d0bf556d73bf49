"""relay.ServerStream: the server's bytes walked as far as needed, split anywhere."""
from types import SimpleNamespace

import pytest

from helios_proxy.protocol import codec, messages as m
from helios_proxy.frontend import plan as p
from helios_proxy.frontend.relay import ServerStream
from helios_proxy.pool.session_state import SessionSettings
from helios_proxy.stats import Counters


def fake_session(mode="transaction", journal=None):
    router = SimpleNamespace(count=lambda node, what: None)
    plan = p.ResponsePlan()
    plan.sent(ord("Q"))
    return SimpleNamespace(plan=plan, counters=Counters(), identity=SimpleNamespace(pooled=True, mode=mode),
                           slot=SimpleNamespace(pinned=None), closing=None, settings=SessionSettings(),
                           proxy=SimpleNamespace(router=router, analytics=None, at_ready=(), at_error=()),
                           journal=journal, cache_state=None, limits_held=[])


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
    assert session.plan.outstanding == 0 and not session.plan.owes() and session.counters.transactions == 1
    assert server.params == {"TimeZone": "UTC"} and session.settings.dirty  # a setting changed


def test_session_mode_never_ends_the_lease_and_hidden_answers_are_cut():
    session, server = fake_session("session"), fake_server()
    session.plan.expect(p.ONE, drop=True)  # the proxy's own Parse: its ParseComplete is not the client's
    session.plan.expect(p.QUERY)
    stream = ServerStream(session, server)
    data, release, _ = stream.feed(codec.message(b"1") + ANSWER)
    assert data == ANSWER and release is False


FATAL = codec.error_response("57P01", "terminating connection due to unexpected postmaster exit", severity="FATAL")
FIRST = (codec.message(m.COMMAND_COMPLETE, codec.cstr("BEGIN")) + codec.ready_for_query(b"T")
         + codec.message(m.DATA_ROW, b"\0\1\0\0\0\0010" * 30))


@pytest.mark.parametrize("step", [1, 3, 7, 64, 1000])
def test_the_journal_checksums_what_the_client_got_since_the_last_idle_ready_for_query(step):
    """Split anywhere: the checksum covers exactly the bytes after the last clean ReadyForQuery
    'I' that went to the client; a FATAL is held back (the replay decides) and ends the stream."""
    import hashlib
    from helios_proxy.continuity.journal import Journal
    journal = Journal(1 << 20)
    session, server = fake_session("session", journal), fake_server()
    session.plan.expect(p.QUERY)
    stream, out = ServerStream(session, server), b""
    for wire in (ANSWER, FIRST + FATAL):
        for i in range(0, len(wire), step):
            data, _, _ = stream.feed(wire[i:i + step])
            out += data
        session.plan.sent(ord("Q"))  # the next query, once the first answer is complete
        session.plan.expect(p.QUERY)
    journal.close()
    assert out == ANSWER + FIRST  # the FATAL is not the client's yet
    assert journal.fatal == FATAL
    assert journal.seen == len(FIRST) and journal.readies == 1
    assert journal.ready_seen == FIRST.index(b"Z") + 6
    assert journal.digest.digest() == hashlib.blake2b(FIRST, digest_size=16).digest()


XID_ANSWER = (codec.message(m.ROW_DESCRIPTION, b"\0\1xid\0" + b"\0" * 18)
              + codec.message(m.DATA_ROW, b"\0\2\0\0\0\x03742\0\0\0\x090/3000060")
              + codec.message(m.COMMAND_COMPLETE, codec.cstr("SELECT 1"))
              + codec.ready_for_query(b"T"))
COMMIT = codec.message(m.COMMAND_COMPLETE, codec.cstr("COMMIT")) + codec.ready_for_query(b"I")


@pytest.mark.parametrize("step", [1, 4, 9, 1000])
def test_the_proxys_own_xid_query_is_cut_out_of_the_stream_and_of_the_checksum(step):
    """replay.ask_xid: the answer to txid_current_if_assigned() sent before a COMMIT sets the
    journal's xid and is neither the client's nor part of what a replay compares."""
    from helios_proxy.continuity.journal import Journal
    journal = Journal(1 << 20)
    session, server = fake_session("transaction", journal), fake_server()
    session.plan.expect(p.QUERY)
    stream, out = ServerStream(session, server), b""
    for i in range(0, len(FIRST[:FIRST.index(b"D")]), step):  # BEGIN's answer
        out += stream.feed(FIRST[i:min(i + step, FIRST.index(b"D"))])[0]
    session.plan.expect_hidden(journal.xid_row)
    session.plan.sent(ord("Q"))
    session.plan.expect(p.QUERY)
    seen, ends = journal.seen, []
    for wire in (XID_ANSWER, COMMIT):
        for i in range(0, len(wire), step):
            data, release, _ = stream.feed(wire[i:i + step])
            out += data
            ends.append(release)
        if wire is XID_ANSWER:
            assert journal.xid == (742, "0/3000060") and journal.seen == seen and journal.readies == 1
            assert session.plan.hidden == 0 and session.plan.outstanding == 1
    journal.close()
    assert out == FIRST[:FIRST.index(b"D")] + COMMIT
    assert ends[-1] and not any(ends[:-1])  # the lease ends at the COMMIT's ReadyForQuery only
    assert journal.seen == 0 and journal.xid is None  # a clean checkpoint after the COMMIT


def test_a_replay_forgets_hidden_queries_and_owes_the_client_one_ready_for_query():
    """A wrapped write lost before any answer: the client's own ReadyForQuery comes from the replay."""
    plan = p.ResponsePlan()
    plan.expect_hidden()                  # BEGIN
    plan.sent(ord("Q"))
    plan.expect_ready_hidden()            # the client's INSERT
    plan.expect_hidden(lambda row: None)  # the xid
    plan.expect_hidden(final=True)        # COMMIT
    plan.forget_hidden()
    assert plan.outstanding == 1 and plan.hidden == 0 and [e.kind for e in plan.entries] == [p.QUERY]
    assert plan.on_message(ord("Z"), b"I") == p.AS_IS  # the replay's ReadyForQuery reaches the client


def msg(mtype, body=b""):
    return codec.message(mtype, body)


ROWS = msg(m.ROW_DESCRIPTION, b"\0\0") + msg(m.DATA_ROW, b"\0\1\0\0\0\0011")
DONE = msg(m.COMMAND_COMPLETE, codec.cstr("SELECT 1")) + codec.ready_for_query(b"I")
PBDES, BES = (p.ONE, p.ONE, p.DESCRIBE_PORTAL, p.EXECUTE, p.SYNC), (p.ONE, p.EXECUTE, p.SYNC)
ERROR = codec.error_response("42P01", "no such table") + codec.ready_for_query(b"I")


@pytest.mark.parametrize("kinds, answer", [
    (PBDES, msg(b"1") + msg(b"2") + ROWS + DONE),   # the usual extended batch
    (PBDES, msg(b"1") + msg(b"2") + msg(b"n") + DONE),
    (BES, msg(b"2") + ROWS[-12:] + DONE),           # a named statement's: Bind, Execute, Sync
    (PBDES, msg(b"1") + ERROR),                     # an error: not whole()'s
    (PBDES, msg(b"1") + msg(b"2") + ERROR),
    (BES, msg(b"2") + ERROR),
    (PBDES, msg(b"1") + msg(b"2")),                 # the answer goes on in the next chunk
    (PBDES, msg(b"1") + msg(b"2") + ROWS),
    (BES, msg(b"2")),
    ((p.ONE, p.ONE, p.SYNC), msg(b"2") + msg(b"3") + codec.ready_for_query(b"I")),  # Bind, Close, Sync
    ((p.ONE, p.SYNC), msg(b"1") + codec.ready_for_query(b"T")),
])
def test_whole_takes_an_extended_answer_as_feed_walks_it(kinds, answer):
    """whole() takes a batch's ParseComplete and BindComplete in one look: what it says of an answer
    (whole, where the lease ends, what the plan still owes) is what feed()'s walk says."""
    plans = []
    for way in ("whole", "feed"):
        session, server = fake_session(), fake_server()
        session.plan.outstanding = 0
        session.plan.sent_request(tuple(p.PLAIN[kind] for kind in kinds))
        stream = ServerStream(session, server)
        if way == "whole":
            got = stream.whole(answer)
            if got is None:  # (not whole()'s: feed() must take it then, and it did not end whole)
                whole = None
                continue
            whole = got[0]
        else:
            out, release, _ = stream.feed(answer)
            assert out == answer
            if whole is not None:
                assert release == whole
        plans.append((session.plan.outstanding, [e.kind for e in session.plan.entries], server.tx_status))
    if whole is not None:
        assert plans[0] == plans[1] and plans[0][0] == 0
    else:
        assert plans[-1][0] == 1 or answer.endswith(ERROR)  # (feed: still owed, or an error's answer)
