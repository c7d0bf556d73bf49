"""Shared by scripts/bench and scripts/bench-idle: start PgBouncer and HeliosProxy in front of a
throwaway cluster, run pgbench, read a process's CPU time."""
import os
import pwd
import re
import shutil
import subprocess
import sys
import time

from helios_proxy.devcluster import free_port

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU of pid and of its live child processes (server.workers), in seconds."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def wait_port(port, timeout=15):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_pgbouncer(base, pg_port, pool_size, mode, auth=("trust", '"postgres" ""\n')):
    """PgBouncer in front of pg_port; auth: (auth_type, auth_file contents)."""
    exe = shutil.which("pgbouncer")
    if not exe:
        sys.exit("pgbouncer not found: run scripts/setup-system --bench (apt install pgbouncer)")
    port = free_port()
    d = os.path.join(base, "pgbouncer")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "users.txt"), "w") as f:
        f.write(auth[1])
    with open(os.path.join(d, "pgbouncer.ini"), "w") as f:
        f.write(f"[databases]\npostgres = host=127.0.0.1 port={pg_port} dbname=postgres\n\n[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = {auth[0]}\n"
                f"auth_file = {d}/users.txt\npool_mode = {mode}\ndefault_pool_size = {pool_size}\n"
                f"max_client_conn = 20000\nunix_socket_dir =\nlogfile = {d}/pgbouncer.log\n")
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        pw = pwd.getpwnam(user)
        for name in ("", "users.txt", "pgbouncer.ini"):
            os.chown(os.path.join(d, name), pw.pw_uid, pw.pw_gid)
    proc = subprocess.Popen([exe, os.path.join(d, "pgbouncer.ini")], user=user,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def start_helios(base, pg_port, pool_size, mode, standby_ports=(), extra="", plugins="enabled = false\n",
                 workers=1):
    """helios-proxy run in front of the primary (and standbys: then reads go to them); extra: more
    TOML sections; plugins: the body of [plugins] (default: none, whatever is installed); workers:
    server.workers. Returns (process, port); the admin API listens on the port in helios-PORT.admin
    next to the config."""
    port, admin_port = free_port(), free_port()
    while admin_port == port:
        admin_port = free_port()
    cfg = os.path.join(base, f"helios-{port}.toml")
    nodes = f'[[nodes]]\nname = "primary"\nhost = "127.0.0.1"\nport = {pg_port}\nrole = "primary"\n'
    for i, sport in enumerate(standby_ports, 1):
        nodes += f'[[nodes]]\nname = "standby{i}"\nhost = "127.0.0.1"\nport = {sport}\nrole = "standby"\n'
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nmax_client_conn = 20000\nworkers = {workers}\n'
                f'[pool]\nmode = "{mode}"\n'
                f'max_size = {pool_size}\n[log]\nconnections = false\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
                f'token = "bench"\n{extra}\n[plugins]\n{plugins}\n{nodes}')
    with open(os.path.join(base, f"helios-{port}.admin"), "w") as f:
        f.write(str(admin_port))
    exe = os.path.join(sys.prefix, "bin", "helios-proxy")
    proc = subprocess.Popen([exe, "run", "-c", cfg], stdout=open(os.path.join(base, f"helios-{port}.log"), "w"),
                            stderr=subprocess.STDOUT)
    wait_port(port)
    return proc, port


def pgbench(port, clients, duration, select_only, protocol, script=None):
    cmd = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-n", "-M", protocol,
           "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(duration), "postgres"]
    if select_only:
        cmd.insert(-1, "-S")
    if script:  # a custom script (-f) instead of the built-in TPC-B-like one
        cmd[-1:-1] = ["-f", script]
    out = subprocess.run(cmd, capture_output=True, text=True)
    tps = re.search(r"^tps = ([\d.]+)", out.stdout, re.M)
    lat = re.search(r"^latency average = ([\d.]+) ms", out.stdout, re.M)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if out.returncode or not tps:
        raise RuntimeError(f"pgbench failed on port {port}: {out.stderr.strip()[-300:]}")
    processed = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    return float(tps.group(1)), float(lat.group(1)), int(failed.group(1)) if failed else 0, int(processed.group(1))
