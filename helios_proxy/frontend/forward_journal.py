"""The transaction journal's steps of the client-to-server direction ([replay] on, continuity/
journal.py and replay.py), asked by the Forwarder: a COMMIT's xid asked first in the same
flight, prepared statements that commit or write noted, lone writes wrapped up to their Sync.
"""
from ..protocol import codec, messages as m
from ..continuity import replay

P = m.PARSE[0]


class JournalSteps:
    """On the Forwarder's buffer and runs (fwd.data, fwd.cut(), fwd.leased(); fwd.wrapping, which
    the forwarder's loop reads at every message)."""
    __slots__ = ("fwd",)

    def __init__(self, forwarder):
        self.fwd = forwarder

    def before_commit(self, begin, how):
        """A COMMIT goes out next: the transaction's xid is asked first, in the same flight
        (replay.ask_xid), so that a COMMIT in flight when the primary fails can be looked up."""
        self.fwd.cut(begin, begin)
        replay.ask_xid(self.fwd.session, how)

    def journal_parse(self, begin, end, commit):
        """A Parse: a named one changes the session's state (session pooling) and a COMMIT's or a
        lone write's name is noted; an unnamed COMMIT is about to run (its xid first), an unnamed
        lone write too (wrapped, if outside a transaction block). False: no server for it."""
        session = self.fwd.session
        journal = session.journal
        name = codec.read_cstr(self.fwd.data[begin + 5:end], 0)[0]
        if name:
            if not session.identity.pooled:
                journal.note_change()
            if commit:
                journal.named[name] = commit
            else:
                journal.named.pop(name, None)
        elif commit:
            if not self.fwd.leased(P, begin, end):
                return False
            self.journaled_step(begin, commit)
        return True

    def journal_bind(self, begin, end):
        body = self.fwd.data[begin + 5:end]
        portal, pos = codec.read_cstr(body, 0)
        kind = self.fwd.session.journal.named.get(codec.read_cstr(body, pos)[0])
        if kind is not None:
            self.journaled_step(begin, kind)

    def journaled_step(self, begin, kind):
        """An extended message that runs a COMMIT (its xid first) or a lone write (wrapped in a
        transaction of its own if outside one, up to the batch's Sync)."""
        if kind == "write":
            if not self.fwd.wrapping and replay.wrap_begin(self.fwd.session, self.fwd, begin):
                self.fwd.wrapping = True
        elif not self.fwd.wrapping:
            self.before_commit(begin, kind)
