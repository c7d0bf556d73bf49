"""A client's statement run in a thread of its own, for tests that act while it waits (a cancel,
PAUSE, a lock): `got` holds its rows (fetch), its status message, or the psycopg2 error it raised."""
import threading

import psycopg2


class Background:
    def __init__(self, cur, sql, params=None, fetch=True):
        self.got = []
        self.thread = threading.Thread(target=self._run, args=(cur, sql, params, fetch), daemon=True)
        self.thread.start()

    def _run(self, cur, sql, params, fetch):
        try:
            cur.execute(sql, params)
            self.got.append(cur.fetchone() if fetch else cur.statusmessage)
        except psycopg2.Error as e:
            self.got.append(e)

    def join(self, timeout):
        self.thread.join(timeout)
        return not self.thread.is_alive()
