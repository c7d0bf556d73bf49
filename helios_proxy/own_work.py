"""Transactions the proxy runs for clients on server connections outside any session's lease: a
batch of INSERTs (batch/), an `/api/sql` request (admin/sql.py), a GraphQL request (graphql/).
PAUSE and SUSPEND wait for them, and a switchover's drain for those on the old primary, as for
the sessions holding a server connection (proxy.py, topology/switchover.py): a write acknowledged
to its client must not commit on the old primary after its WAL head was read."""
import socket
from contextlib import contextmanager


class OwnWork:
    """What runs now: token -> [database, its server connection (None until it has one)]. Tokens
    are the work's own objects (a batch's Flight) or made here (running())."""
    __slots__ = ("running_now",)

    def __init__(self):
        self.running_now = {}

    def begin(self, token, database, conn=None):
        self.running_now[token] = [database, conn]

    def on(self, token, conn):
        """token's work now runs on conn."""
        entry = self.running_now.get(token)
        if entry is not None:
            entry[1] = conn

    def end(self, token):
        self.running_now.pop(token, None)

    @contextmanager
    def running(self, database, conn):
        """The block runs work of database on conn."""
        token = object()
        self.begin(token, database, conn)
        try:
            yield
        finally:
            self.end(token)

    def count(self, database=None, node=None):
        """How many run (of database; with node, on a connection to node)."""
        return sum(1 for db, conn in list(self.running_now.values())
                   if (database is None or db == database)
                   and (node is None or conn is not None and conn.node.name == node.name))

    def end_on(self, node):
        """A switchover's drain gave up waiting: the work running on node loses its connection
        (shut down: its reader sees the end), and its clients hear what a session ended in its
        transaction would (a batch's: may or may not have been committed)."""
        for _, conn in list(self.running_now.values()):
            if conn is not None and conn.node.name == node.name and conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
