"""The server-to-client direction of a session: stream the server's replies to the client.

Runs in its own greenlet per server lease. It tracks ReadyForQuery (transaction status, replies
outstanding) and ParameterStatus, splices proxy answers in exactly before or after a given
ReadyForQuery, and, in transaction/statement pooling, ends the lease when the server goes idle.
"""
import logging

from ..errors import CONNECTION_FAILURE, ProtocolViolation
from ..protocol import codec, messages as m
from ..protocol.framing import StreamScanner

log = logging.getLogger(__name__)
RECV_SIZE = 65536
READY = m.READY_FOR_QUERY[0]
WANTS = (READY, m.PARAMETER_STATUS[0])


def pump(session, server):
    """Relay until the server is released (pooling) or lost; never raises."""
    scanner = StreamScanner(WANTS)
    recv, send = server.sock.recv, session.send
    held = b""  # trailing bytes of a ReadyForQuery/ParameterStatus not complete yet
    try:
        while True:
            data = recv(RECV_SIZE)
            if not data:
                raise ConnectionResetError("server closed the connection")
            found = scanner.feed(data)
            shift = len(held)
            if shift:
                data, held = held + data, b""
            sent = 0
            release = False
            for mtype, body, end in found:
                if mtype == READY:
                    server.tx_status = body
                    session.outstanding -= 1
                    session.ready_seen += 1
                    if session.answers and session.answers[0][0] == session.ready_seen:
                        _, before, payload = session.answers.popleft()
                        cut = end + shift - 6 if before else end + shift
                        tail = b"" if before else codec.ready_for_query(body)
                        send(data[sent:cut] + payload + tail)
                        sent = cut
                    release = session.may_release()
                else:
                    name, value = codec.parse_parameter_status(body)
                    server.params[name] = value
            partial = scanner.partial()
            if partial:
                held = data[len(data) - partial:]
                data = data[sent:len(data) - partial]
            elif sent:
                data = data[sent:]
            if release:
                session.detach()  # before the client can send its next query
            if data:
                send(data)
            if release:
                session.end_lease(server)
                return
    except ProtocolViolation as e:
        lost(session, server, f"protocol violation from server: {e.message}")
    except OSError as e:
        lost(session, server, str(e))
    except Exception:
        log.exception("%r: relaying from the server failed", session)
        lost(session, server, "internal error")


def lost(session, server, why):
    server.broken = True
    log.warning("%r: server %s lost: %s", session, server.node.name, why)
    if session.closing is None:
        session.terminate("server closed the connection unexpectedly", sqlstate=CONNECTION_FAILURE)
