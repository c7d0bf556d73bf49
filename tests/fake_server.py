"""A scripted stand-in for a PostgreSQL server on loopback, for tests of what the proxy does with a
malformed or hostile backend: each connection is handed to `talk(conn)` in a thread of its own."""
import socket
import threading


class FakeServer:
    def __init__(self, talk):
        self.talk = talk
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn):
        try:
            conn.settimeout(10)
            self.talk(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.listener.close()
