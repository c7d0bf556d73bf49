"""A tiny raw protocol client for tests that need to see exact messages (SQLSTATEs, ordering)."""
import socket


from helios_proxy.protocol import codec
from helios_proxy.protocol.framing import MessageBuffer


class Wire:
    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = MessageBuffer(1 << 30)

    def send(self, data):
        self.sock.sendall(data)

    def read(self):
        """Next message as (type, body); None at EOF."""
        while True:
            msg = self.buf.next_message()
            if msg is not None:
                return msg
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf.feed(data)

    def until_ready(self):
        """Messages up to and including ReadyForQuery (or EOF)."""
        out = []
        while True:
            msg = self.read()
            if msg is None:
                return out
            out.append(msg)
            if msg[0] == b"Z":
                return out

    def startup(self, **params):
        self.send(codec.startup_message(params))
        return self.until_ready()

    def close(self):
        self.sock.close()


def error_of(messages):
    """Fields of the first ErrorResponse among messages, or None."""
    for mtype, body in messages:
        if mtype == b"E":
            return codec.parse_fields(body)
    return None


def startup_error(port, **params):
    w = Wire(port)
    try:
        return error_of(w.startup(**params))
    finally:
        w.close()



