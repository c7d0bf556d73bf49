"""`[server] workers = N`: N proxy processes sharing the listen port, supervised by one arbiter.

Each worker is a whole `helios-proxy run` (its own pools, health checks and sessions) that binds the
client port with SO_REUSEPORT, so the kernel spreads new connections over the workers. Limits are
split so that together the workers keep the configured ones (`share`): pool sizes and connection
caps are divided, the remainder going to the first workers; [[limits]] keep their state in a table
all workers map (limits/shared.py), created here in the private run directory. Only worker 0 promotes standbys; the
others follow the topology their probes see (failover.mode external).

The arbiter starts the workers, restarts one that dies, passes SIGHUP/SIGTERM/SIGINT on to all of
them, and serves the admin API on admin.listen for all of them (admin/front.py): every worker serves
its own API on a private Unix socket in a directory only this user can enter.
"""
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import gevent
from gevent.queue import Queue

from ..errors import ConfigError
from ..limits import shared as limits_table

log = logging.getLogger(__name__)

# Per-process caps that add up over the workers: [section, key] -> smallest share allowed (0 = off).
SPLIT = (("server", "max_client_conn", 1), ("pool", "max_size", 1), ("pool", "min_size", 0),
         ("pool", "reserve_size", 0), ("pool", "max_db_connections", 1), ("pool", "max_user_connections", 1))


def part(total, index, count, least):
    """Worker index's part of total split over count workers (the first ones take the remainder);
    0 stays 0 (no limit), and no part is below least."""
    if not total:
        return total
    return max(least, total // count + (1 if index < total % count else 0))


def share(config, index, count):
    """The configuration worker index of count runs with (config is changed and returned)."""
    if count <= 1:
        return config
    for section, key, least in SPLIT:
        obj = getattr(config, section)
        setattr(obj, key, part(getattr(obj, key), index, count, least))
    for db in config.databases.values():
        for key, least in (("max_size", 1), ("min_size", 0)):
            if getattr(db, key, None):
                setattr(db, key, part(getattr(db, key), index, count, least))
    for user in config.users.values():
        if getattr(user, "max_connections", None):
            user.max_connections = part(user.max_connections, index, count, 1)
    if index:
        config.failover.mode = "external"  # one promoter: worker 0; the others follow the probes
    return config


class Worker:
    def __init__(self, index, socket_path):
        self.index = index
        self.socket = socket_path
        self.process = None
        self.started = 0.0
        self.restarts = 0


class Arbiter:
    """Starts and supervises the workers; serves the admin API in front of them."""

    def __init__(self, config, path):
        self.config = config
        self.path = os.path.abspath(path)
        self.rundir = tempfile.mkdtemp(prefix="helios-workers-")  # mode 0700: only we reach the sockets
        self.workers = [Worker(i, os.path.join(self.rundir, f"worker-{i}.sock"))
                        for i in range(config.server.workers)]
        self.commands = Queue()
        self.stopping = False
        self.admin = None
        self.unix = None  # the listening Unix socket (server.unix_socket_dir), shared by the workers

    def command(self, worker):
        unix = ["--unix-fd", str(self.unix.fileno())] if self.unix is not None else []
        return [sys.executable, "-m", "helios_proxy.cli", "run", "-c", self.path,
                "--worker", str(worker.index), "--admin-socket", worker.socket, *unix]

    def spawn(self, worker):
        worker.started = time.monotonic()
        worker.process = subprocess.Popen(self.command(worker),
                                          pass_fds=(self.unix.fileno(),) if self.unix is not None else ())
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def serve_forever(self):
        """Run until SIGTERM/SIGINT; returns the exit status."""
        watcher = None
        try:
            if self.config.server.unix_socket_dir:  # one Unix socket, inherited by every worker
                from .listen import parse_address, unix_listener
                self.unix = unix_listener(self.config.server.unix_socket_dir,
                                          parse_address(self.config.server.listen)[1],
                                          self.config.server.unix_socket_mode)
            limits_table.create(self.rundir)  # (also for limits a reload may add)
            for worker in self.workers:
                self.spawn(worker)
            for worker in self.workers:
                if not self._wait_ready(worker):
                    return 1
            if self.config.admin.enabled:
                from ..admin import front
                self.admin = front.start(self)
            for signum, name in ((signal.SIGTERM, "term"), (signal.SIGINT, "int"), (signal.SIGHUP, "hup")):
                gevent.signal_handler(signum, self.commands.put, name)
            watcher = gevent.spawn(self._supervise)
            log.info("HeliosProxy listening on %s with %d workers", self.config.server.listen, len(self.workers))
            while True:
                command = self.commands.get()
                if command == "hup":
                    self.reload()
                else:
                    self._stop(signal.SIGTERM if command == "term" else signal.SIGINT)
                    return 0
        finally:
            self.stopping = True
            if watcher is not None:
                watcher.kill()
            self._stop(signal.SIGINT)  # whatever is still running (a failed start): at once
            if self.admin is not None:
                self.admin.stop(timeout=1)
            shutil.rmtree(self.rundir, ignore_errors=True)
            if self.unix is not None:
                path = self.unix.getsockname()
                self.unix.close()
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def reload(self):
        """SIGHUP: every worker reloads; the arbiter re-reads what its admin API uses (the token)."""
        from ..config import load_file
        try:
            self.config.admin.token = load_file(self.path).admin.token
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
        self.signal_all(signal.SIGHUP)

    def _wait_ready(self, worker, timeout=30):
        """True once the worker serves its admin socket; False if it exits first (bad port...)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                log.error("worker %d exited with status %s while starting", worker.index, worker.process.returncode)
                return False
            if os.path.exists(worker.socket):
                return True
            gevent.sleep(0.05)
        log.error("worker %d did not start within %d s", worker.index, timeout)
        return False

    def _supervise(self):
        """Start again a worker that died (at most once a second)."""
        while True:
            gevent.sleep(0.2)
            for worker in self.workers:
                if self.stopping or worker.process.poll() is None:
                    continue
                log.error("worker %d (pid %d) exited with status %s; starting it again", worker.index,
                          worker.process.pid, worker.process.returncode)
                gevent.sleep(max(0.0, 1.0 - (time.monotonic() - worker.started)))
                if os.path.exists(worker.socket):
                    os.unlink(worker.socket)
                worker.restarts += 1
                self.spawn(worker)

    def running(self):
        return [w for w in self.workers if w.process is not None and w.process.poll() is None]

    def signal_all(self, signum):
        for worker in self.running():
            worker.process.send_signal(signum)

    def _stop(self, signum):
        """Stop every worker still running (SIGTERM: gracefully, within shutdown_timeout)."""
        self.stopping = True
        if not self.running():
            return
        self.signal_all(signum)
        deadline = time.monotonic() + self.config.server.shutdown_timeout + 5
        for worker in self.running():
            while worker.process.poll() is None and time.monotonic() < deadline:
                gevent.sleep(0.05)
            if worker.process.poll() is None:
                worker.process.kill()
        log.info("stopped")
