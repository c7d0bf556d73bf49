"""The response plan: what the client expects back, in order, and the proxy's edits to it."""
from helios_proxy.protocol import codec
from helios_proxy.frontend import plan as p

Z, E, ONE_DONE, T, C, N = ord("Z"), ord("E"), ord("1"), ord("T"), ord("C"), ord("N")


def test_a_proxy_answer_waits_for_the_server_answers_asked_before_it():
    plan = p.ResponsePlan()
    plan.expect(p.QUERY)
    assert plan.fake(b"answer", p.READY_NOW) is None  # queued: the server still owes a Query's answer
    assert plan.on_message(T, b"") == p.AS_IS
    assert plan.on_message(C, b"") == p.AS_IS
    drop, extra = plan.on_message(Z, b"T")
    assert not drop and extra == b"answer" + codec.ready_for_query(b"T")  # with the status of that moment
    assert not plan


def test_with_nothing_owed_a_proxy_answer_goes_out_at_once():
    assert p.ResponsePlan().fake(b"x", p.READY_NOW) == b"x" + codec.ready_for_query(b"I")


def test_an_extended_error_skips_to_sync_and_calls_back_every_skipped_request():
    plan, failed = p.ResponsePlan(), []
    plan.expect(p.ONE, on_fail=lambda: failed.append("parse"))
    plan.expect(p.ONE, on_fail=lambda: failed.append("bind"))
    plan.expect(p.EXECUTE)
    plan.expect(p.SYNC)
    assert plan.on_message(E, b"") == p.AS_IS
    assert failed == ["parse"] and plan.skipping
    assert plan.on_message(Z, b"I") == (False, b"")
    assert failed == ["parse", "bind"] and not plan and not plan.skipping


def test_hidden_requests_are_cut_out_and_async_messages_pass_anywhere():
    plan = p.ResponsePlan()
    plan.expect(p.ONE, drop=True)  # a Parse the proxy sent on its own
    plan.expect(p.ONE)
    assert plan.on_message(N, b"notice") == p.AS_IS
    assert plan.on_message(ONE_DONE, b"") == (True, b"")
    assert plan.on_message(ONE_DONE, b"") == p.AS_IS
    assert not plan


def test_the_proxys_own_sync_keeps_its_ready_for_query_from_the_client():
    plan = p.ResponsePlan()
    plan.expect(p.EXECUTE, drop=True)
    plan.expect(p.SYNC, drop=True)
    assert plan.on_message(C, b"")[0] is True
    assert plan.on_message(Z, b"I")[0] is True
