"""Message framing: split a byte stream into typed messages, with strict length limits.

Two shapes: `MessageBuffer` yields whole messages (for the client side, where the proxy must be
able to inspect or rewrite a message before forwarding it) and `StreamScanner` only walks message
boundaries, so a relay can forward large results without holding them (server side).
"""
from struct import Struct

from ..errors import ProtocolViolation
from ..speedups import scan, unpack_int32

INT32 = Struct("!i")
HEADER = Struct("!ci")  # type byte, length (counts itself, not the type byte)


class MessageBuffer:
    """Accumulates bytes and hands out complete (type, body) messages. buf[pos:] is what is not
    handed out yet (pending(); a few hot paths read the two fields themselves)."""

    __slots__ = ("buf", "pos", "max_size")

    def __init__(self, max_size):
        self.buf = bytearray()
        self.pos = 0
        self.max_size = max_size

    def feed(self, data):
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    def next(self):
        """Return (type_int, begin, end) of the next complete message in self.buf, or None.

        The message is buf[begin:end]; its body is buf[begin + 5:end].
        """
        buf, pos = self.buf, self.pos
        if len(buf) - pos < 5:
            return None
        length = unpack_int32(buf, pos + 1)[0]
        if length < 4 or length > self.max_size:
            raise ProtocolViolation(f"invalid message length {length} for message type {buf[pos:pos + 1]!r}")
        end = pos + 1 + length
        if len(buf) < end:
            return None
        self.pos = end
        return buf[pos], pos, end

    def head(self):
        """(type_int, length) of the message at pos when its header is here (not validated), else None."""
        if len(self.buf) - self.pos < 5:
            return None
        return self.buf[self.pos], unpack_int32(self.buf, self.pos + 1)[0]

    def next_message(self):
        """Return (type_bytes, body_bytes) of the next complete message, or None."""
        msg = self.next()
        if msg is None:
            return None
        mtype, begin, end = msg
        return bytes((mtype,)), bytes(self.buf[begin + 5:end])

    def pending(self):
        """Bytes buffered that do not yet form a complete message."""
        return len(self.buf) - self.pos


class StreamScanner:
    """Walks message boundaries of a stream fed in arbitrary chunks.

    `feed(data)` returns the complete messages whose type is in `wanted` as (type_int, body, end),
    `end` being the offset in `data` just past the message; every other message is skipped without
    being copied. `partial()` tells how many trailing bytes belong to a header or wanted message
    not complete yet, so a relay that holds those back always sends wanted messages whole.
    """

    __slots__ = ("wanted", "skip", "head", "body_type", "body", "body_left", "max_size")

    def __init__(self, wanted, max_size=1 << 30):
        self.wanted = frozenset(wanted)
        self.skip = 0          # bytes of an unwanted message still to pass
        self.head = b""        # a partial 5-byte header
        self.body_type = None  # type of a wanted message whose body is being collected
        self.body = b""
        self.body_left = 0
        self.max_size = max_size

    def feed(self, data):
        if self.skip or self.head or self.body_type is not None:
            out, pos = [], 0
        else:  # the whole messages at once (speedups.scan: in C where it was built), then the rest
            out, pos = scan(data, self.wanted, self.max_size)
        n = len(data)
        while pos < n:
            if self.skip:
                step = min(self.skip, n - pos)
                self.skip -= step
                pos += step
                continue
            if self.body_type is not None:
                step = min(self.body_left, n - pos)
                self.body += data[pos:pos + step]
                self.body_left -= step
                pos += step
                if not self.body_left:
                    out.append((self.body_type, self.body, pos))
                    self.body_type, self.body = None, b""
                continue
            if self.head or n - pos < 5:
                need = 5 - len(self.head)
                self.head += data[pos:pos + need]
                pos += min(need, n - pos)
                if len(self.head) < 5:
                    break
                mtype, length = self.head[0], unpack_int32(self.head, 1)[0]
                self.head = b""
            else:
                mtype, length = data[pos], unpack_int32(data, pos + 1)[0]
                pos += 5
            if length < 4 or length > self.max_size:
                raise ProtocolViolation(f"invalid message length {length} from server")
            if mtype in self.wanted:
                body_len = length - 4
                if n - pos >= body_len:
                    out.append((mtype, bytes(data[pos:pos + body_len]), pos + body_len))
                    pos += body_len
                else:
                    self.body_type, self.body_left = mtype, body_len
                    self.body = b""
            else:
                self.skip = length - 4
        return out

    def partial(self):
        if self.head:
            return len(self.head)
        return 5 + len(self.body) if self.body_type is not None else 0

    def at_boundary(self):
        return not (self.skip or self.head or self.body_type is not None)
