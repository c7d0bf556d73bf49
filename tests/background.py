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


class Probe:
    """A steady client beside an action: it runs `sql` in a loop on a connection of its own and
    keeps each statement's time and any error. `with Probe(connect) as probe:` returns once the
    probe's first statement is answered, so the action inside the block runs while the probe is
    live (a probe still logging in when a fast action ends has seen nothing); on leaving, it
    waits for one more statement to end (the one that overlapped the action's end, or a later
    one), then stops: `probe.times` / `probe.errors` tell what a client saw meanwhile."""

    def __init__(self, connect, sql="select 1", pause=0.0, timeout=30):
        self.connect, self.sql, self.pause, self.timeout = connect, sql, pause, timeout
        self.times, self.errors = [], []
        self._live, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        assert self._live.wait(self.timeout), f"the probe's first {self.sql!r} got no answer in {self.timeout} s"
        assert not self.errors, self.errors[:3]
        self.times.clear()  # (its login and first statement are not part of the action's window)
        return self

    def __exit__(self, *exc):
        import time
        seen, deadline = self.seen(), time.monotonic() + self.timeout
        while self.seen() == seen and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        self._stop.set()
        self._thread.join(self.timeout)
        assert not self._thread.is_alive(), f"the probe's {self.sql!r} did not end in {self.timeout} s"

    def seen(self):
        return len(self.times) + len(self.errors)

    def _run(self):
        import time
        try:
            conn = self.connect()
            conn.autocommit = True
            cur = conn.cursor()
        except Exception as e:
            self.errors.append(repr(e))
            self._live.set()
            return
        try:
            while not self._stop.is_set():
                t = time.monotonic()
                try:
                    cur.execute(self.sql)
                    self.times.append(time.monotonic() - t)
                except psycopg2.Error as e:
                    self.errors.append(str(e))
                    if conn.closed:
                        return
                self._live.set()
                if self.pause:
                    time.sleep(self.pause)
        finally:
            self._live.set()
            conn.close()
