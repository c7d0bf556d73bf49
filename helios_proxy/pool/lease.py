"""A lease: one server connection lent to one client, from a pool, until the pool mode says it
goes back (the spec's pool::lease, pool::session, pool::transaction, pool::statement).

The session holds its lease and never the lease's parts; the lease owns the server connection,
the pump that moves the server's answers to the client (frontend/relay.py), and where it went and
why (routing). `ends_here` is the release rule of the pool modes, asked by the pump at every
ReadyForQuery:

    session      never: the lease ends with the session
    transaction  at the ReadyForQuery that leaves the server idle ('I') with nothing owed
    statement    the same; transaction blocks are refused earlier (pipeline/stages/pooling_guard.py),
                 so every statement ends idle

A lease never ends while the server still owes answers (the response plan), while the client
streams a large CopyData to it, or while the client is pinned (state that cannot move).

A lease is active: `run()` starts its pump (frontend/relay.py `start`, which registers itself as
`Lease.starter`: the pool layer does not import the client side), `borrow()` lends its server
connection to the proxy's own statements with the pump stopped meanwhile and started again after
(one place for that dance), `stop_pump()` stops it for good (the lease ends, or the session does),
`switch()` moves it onto the server connection a replay found (continuity/replay.py), `end()` gives
its server connection back.
"""
from time import monotonic
from contextlib import contextmanager

from ..protocol import messages as m

RELEASED_AT_IDLE = {"session": False, "transaction": True, "statement": True}


class Lease:
    __slots__ = ("session", "pool", "server", "target", "intent", "started", "pump", "sick")
    starter = None                # relay.start(session, lease) -> its pump (frontend/relay.py sets it)

    def __init__(self, session, pool, server, target="primary", intent="primary"):
        self.session = session    # whose it is (the pump moves the server's answers to it)
        self.pool = pool          # where the server connection goes back
        self.server = server
        self.target = target      # where it went: primary | standby
        self.intent = intent      # where routing wanted it (a read that fell back is still a read)
        self.started = monotonic()
        self.pump = None          # relay.CallbackPump or a greenlet (TLS), while running
        self.sick = False         # the server answered an error that means the node fails (breaker)

    def again(self, pool, server, target, intent, now=None):
        """This lease serves its session's next one (LeaseSlot reuses a lease it gave back in a loop
        callback, which nothing holds any more: an object less per transaction). now: time.monotonic(),
        when the caller just asked it."""
        self.pool = pool  # (one by one: four at once would make and unpack a tuple)
        self.server = server
        self.target = target
        self.intent = intent
        self.started = monotonic() if now is None else now
        self.sick = False  # (its pump: the caller starts it)
        return self

    def __repr__(self):
        return f"<lease {self.server!r} {self.target}>"

    def run(self):
        """Start moving the server's answers to the session."""
        self.pump = Lease.starter(self.session, self)
        return self

    def stop_pump(self, block=True):
        """Stop moving the server's bytes (the lease ends, or the session does)."""
        pump, self.pump = self.pump, None
        if pump is not None:
            pump.stop(block)

    def end(self, reusable=True):
        """The server connection goes back to its pool (reusable: its state is known and clean),
        or is closed."""
        self.pool.release(self.server, reusable)

    def switch(self, pool, server):
        """A replay moved the lease onto server (of pool): it goes on there; the lost connection is
        closed."""
        old_pool, old = self.pool, self.server
        self.pool, self.server = pool, server
        old_pool.release(old, reusable=False)

    @contextmanager
    def borrow(self):
        """The server connection for the proxy's own statements, between two of the client's: the
        pump stopped meanwhile, started again after (whatever happened)."""
        self.stop_pump(block=True)
        try:
            yield self.server
        finally:
            self.run()


def ends_here(session, server):
    """At a ReadyForQuery: does the session's lease end, by its pool mode's rule?"""
    return (RELEASED_AT_IDLE[session.identity.mode] and server.tx_status == m.TX_IDLE and not session.plan.owes()
            and not session.slot.pinned and session.closing is None and not session.plan.streaming)
