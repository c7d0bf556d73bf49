"""A large message the proxy need not read whole, in the client-to-server direction: CopyData of a
COPY in progress is streamed to the server as it arrives, a message refused or skipped anyway is
dropped as it arrives; neither is held in memory. Any other incomplete message is held whole, up to
`server.max_message_size`. Asked by the Forwarder (frontend/forward.py) when its buffer ends inside
a message, and for the bytes that follow while one is streaming.
"""
from ..errors import ProtocolViolation
from ..protocol import messages as m

Q, P, COPY_DATA = m.QUERY[0], m.PARSE[0], m.COPY_DATA[0]
BIG = 1 << 16
STREAM_AT = 1 << 20       # a message the proxy need not read, larger than this, is streamed


def span(data, a, b):
    """data[a:b] to send; a large span as a view of the buffer, not a copy."""
    return data[a:b] if b - a < BIG else memoryview(data)[a:b]


class StreamSteps:
    """On the Forwarder's buffer and steps (fwd.skip_to_sync, fwd.max_query, fwd.send,
    fwd.refuse_too_large); `left` bytes of the message being passed on to `sink` (None: dropped)."""
    __slots__ = ("fwd", "left", "sink")

    def __init__(self, forwarder):
        self.fwd = forwarder
        self.left, self.sink = 0, None

    def held(self, mtype, length, buf):
        """The message begun in buf is not complete yet: stream it to the server if the proxy need
        not read it (CopyData, while leased) and it is large; else it is held whole."""
        fwd = self.fwd
        session = fwd.session
        if fwd.skip_to_sync and length > STREAM_AT:  # ignored up to Sync anyway: never held
            self.pass_on(buf, length, None)
        elif (mtype == Q or mtype == P) and length + 1 > fwd.max_query:  # refused, never held: dropped
            self.pass_on(buf, length, None)
            fwd.refuse_too_large(mtype, length + 1)
        elif (length > STREAM_AT and mtype == COPY_DATA and session.server is not None and session.plan.outstanding
                and not fwd.skip_to_sync and not session.statements.discard_pending):
            # CopyData of a COPY in progress: streamed; the lease cannot end before the last byte
            # went to its server (plan.streaming), so no byte of it can reach another client
            session.plan.stream_begins()
            self.pass_on(buf, length, fwd.send)
        elif length > session.proxy.config.server.max_message_size:
            raise ProtocolViolation(f"invalid message length {length} for message type {bytes((mtype,))!r} "
                                    f"(server.max_message_size)")

    def pass_on(self, buf, length, sink):
        """Hand the message begun in buf to sink (None: drop it), now and as the rest arrives."""
        have = len(buf.buf) - buf.pos
        if sink is not None:
            sink(span(buf.buf, buf.pos, len(buf.buf)))
        buf.pos = len(buf.buf)
        self.left, self.sink = 1 + length - have, sink

    def stream(self, data):
        """Pass the next part of a streamed message on; return what follows it."""
        n = min(len(data), self.left)
        if self.sink is not None:
            self.sink(data[:n] if n < len(data) else data)
        self.left -= n
        session = self.fwd.session
        if not self.left and session.plan.streaming:
            session.plan.stream_ends()
            session.slot.release_if_idle()  # the server may have finished meanwhile
        return data[n:]
