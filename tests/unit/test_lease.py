"""The release rule of the pool modes (pool/lease.py), asked at every ReadyForQuery."""
from types import SimpleNamespace

import pytest

from helios_proxy.pool.lease import ends_here
from helios_proxy.frontend.plan import ResponsePlan


def session(mode, outstanding=0, in_extended=False, **kw):
    plan = ResponsePlan()
    plan.outstanding, plan.in_extended = outstanding, in_extended
    plan.streaming = kw.pop("streaming", False)
    values = dict(identity=SimpleNamespace(mode=mode), plan=plan, slot=SimpleNamespace(pinned=kw.pop("pinned", None)),
                  closing=None)
    values.update(kw)
    return SimpleNamespace(**values)


IDLE, IN_TX = SimpleNamespace(tx_status=b"I"), SimpleNamespace(tx_status=b"T")


def test_session_mode_keeps_its_server_for_the_whole_session():
    assert not ends_here(session("session"), IDLE)


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_pooled_modes_give_the_server_back_when_idle_with_nothing_owed(mode):
    assert ends_here(session(mode), IDLE)
    assert not ends_here(session(mode), IN_TX)  # inside a transaction block
    assert not ends_here(session(mode, outstanding=1), IDLE)  # a pipelined query's answer is still due
    assert not ends_here(session(mode, in_extended=True), IDLE)  # extended messages not yet synced
    assert not ends_here(session(mode, pinned="LISTEN"), IDLE)  # state that cannot move
    assert not ends_here(session(mode, streaming=True), IDLE)  # a large CopyData still on its way
    assert not ends_here(session(mode, closing="admin"), IDLE)
    owed = session(mode)
    owed.plan.expect(0)
    assert not ends_here(owed, IDLE)
