"""A throwaway local PostgreSQL cluster (primary + streaming standbys) for the demo and the tests.

    python -m helios_proxy.devcluster up DIR [--port N] [--standbys N]   # prints ports, keeps running
    python -m helios_proxy.devcluster down DIR

Runs the server binaries as the `postgres` user when started as root. Creates the roles the tests
and the demo use: `app` (trust), `md5_user` / `scram_user` (passwords md5-pass / scram-pass, with
pg_hba methods md5 and scram-sha-256), and a database `app`.
"""
import argparse
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

USERS = {"md5_user": ("md5-pass", "md5"), "scram_user": ("scram-pass", "scram-sha-256")}


def find_bin_dir():
    explicit = os.environ.get("PG_BIN")
    if explicit:
        return explicit
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    raise RuntimeError("PostgreSQL server binaries not found; install postgresql or set PG_BIN")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n):
    """n different free ports (each held until all are picked, so none is handed out twice)."""
    held = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


class ClusterError(Exception):
    """A cluster that could not be made or started, with the cause in one line."""


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def last_lines(path, n=3):
    """The last lines of a log that say what went wrong (FATAL/ERROR ones first)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    bad = [line for line in lines if "FATAL" in line or "ERROR" in line or "could not" in line]
    return " / ".join((bad or lines)[-n:])[-400:]


class Cluster:
    def __init__(self, base, port=None, standbys=1, bin_dir=None, conf=None):
        self.base = os.path.abspath(base)
        self.bin = bin_dir or find_bin_dir()
        self.standbys = standbys
        self.extra_conf = conf or {}
        self.ports = [port + i for i in range(standbys + 1)] if port else None
        self.user = "postgres" if os.geteuid() == 0 else None

    # --- helpers ----------------------------------------------------------------------------
    def _run(self, *args, **kw):
        return subprocess.run([os.path.join(self.bin, args[0]), *args[1:]], user=self.user, check=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)

    def datadir(self, i):
        return os.path.join(self.base, "primary" if i == 0 else f"standby{i}")

    @property
    def primary_port(self):
        return self.ports[0]

    def sql(self, query, port=None, db="postgres"):
        return self._run("psql", "-h", "127.0.0.1", "-p", str(port or self.primary_port), "-U", "postgres",
                         "-d", db, "-AtqX", "-v", "ON_ERROR_STOP=1", "-c", query).stdout

    # --- lifecycle --------------------------------------------------------------------------
    def start(self):
        os.makedirs(self.base, exist_ok=True)
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        state = os.path.join(self.base, "ports.json")
        if os.path.exists(state):
            self.ports = json.load(open(state))
        else:  # (ports.json is written last: data folders without it are a first run that failed)
            for i in range(self.standbys + 1):
                shutil.rmtree(self.datadir(i), ignore_errors=True)
            self.ports = self.ports or free_ports(self.standbys + 1)
            for port in self.ports:
                if not port_free(port):
                    raise ClusterError(f"port {port} is in use (by another program): choose other ports")
            self._init_primary()
            for i in range(1, self.standbys + 1):
                self._init_standby(i)
            with open(state, "w") as f:
                json.dump(self.ports, f)
        for i in range(len(self.ports)):
            self._start(i)
        return self

    def _start(self, i):
        d = self.datadir(i)
        status = subprocess.run([os.path.join(self.bin, "pg_ctl"), "-D", d, "status"], user=self.user,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if status.returncode != 0:
            try:
                self._run("pg_ctl", "-D", d, "-l", d + ".log", "-w", "-t", "60",
                          "-o", f"-p {self.ports[i]} -k {self.base}", "start")
            except subprocess.CalledProcessError as e:  # the cause is in the server's log: say it
                raise ClusterError(f"PostgreSQL did not start on port {self.ports[i]}: "
                                   f"{last_lines(d + '.log') or e.stdout.strip()[-300:]}") from None

    def _init_primary(self):
        d = self.datadir(0)
        self._run("initdb", "-D", d, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8",
                  "--locale", "C")
        conf = {"listen_addresses": "'127.0.0.1'", "max_connections": "200", "wal_level": "logical",
                "max_wal_senders": "10", "hot_standby": "on", "fsync": "off",
                "full_page_writes": "off", "shared_buffers": "64MB", "password_encryption": "'scram-sha-256'",
                "unix_socket_directories": f"'{self.base}'", "log_min_messages": "warning"}
        conf.update(self.extra_conf)
        with open(os.path.join(d, "postgresql.conf"), "a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        with open(os.path.join(d, "pg_hba.conf"), "w") as f:
            for user, (_, method) in USERS.items():
                f.write(f"host all {user} 127.0.0.1/32 {method}\n")
            f.write("host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
                    "local all all trust\n")
        self._start(0)
        stmts = ["CREATE ROLE app LOGIN SUPERUSER", "CREATE DATABASE app OWNER app"]
        for user, (password, method) in USERS.items():
            enc = "md5" if method == "md5" else "scram-sha-256"
            stmts.append(f"SET password_encryption = '{enc}'; CREATE ROLE {user} LOGIN PASSWORD '{password}'; "
                         f"GRANT pg_read_all_data TO {user}")
        for stmt in stmts:
            self.sql(stmt)

    def _init_standby(self, i):
        d = self.datadir(i)
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports[0]), "-U", "postgres", "-D", d,
                  "-R", "-X", "stream", "-c", "fast", "--no-sync")
        with open(os.path.join(d, "postgresql.auto.conf"), "a") as f:
            f.write(f"primary_conninfo = 'host=127.0.0.1 port={self.ports[0]} user=postgres "
                    f"application_name=standby{i}'\n")

    def wait_replayed(self, timeout=30):
        """Wait until every standby has replayed the primary's current WAL position."""
        lsn = self.sql("SELECT pg_current_wal_lsn()").strip()
        deadline = time.monotonic() + timeout
        for port in self.ports[1:]:
            while self.sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'", port=port).strip() != "t":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"standby on {port} did not replay {lsn}")
                time.sleep(0.05)

    def stop(self):
        for i in reversed(range(len(self.ports or []))):
            subprocess.run([os.path.join(self.bin, "pg_ctl"), "-D", self.datadir(i), "-m", "immediate", "-w",
                            "stop"], user=self.user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def destroy(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m helios_proxy.devcluster", description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("up", "down", "destroy"))
    ap.add_argument("dir")
    ap.add_argument("--port", type=int, help="primary port (standbys follow); default: free ports")
    ap.add_argument("--standbys", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        cluster = Cluster(args.dir, args.port, args.standbys)
        if args.action == "up":
            cluster.start()
            print(json.dumps({"primary": cluster.ports[0], "standbys": cluster.ports[1:]}))
            return 0
    except (ClusterError, RuntimeError) as e:
        print(f"devcluster: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:  # initdb, pg_basebackup, psql: their own words
        out = " / ".join(line for line in (e.stdout or "").strip().splitlines()[-3:])
        print(f"devcluster: {os.path.basename(e.cmd[0])} failed: {out or e}", file=sys.stderr)
        return 1
    if args.action == "up":
        return 0
    else:
        state = os.path.join(cluster.base, "ports.json")
        if os.path.exists(state):
            cluster.ports = json.load(open(state))
        cluster.destroy() if args.action == "destroy" else cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
