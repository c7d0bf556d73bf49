"""A real PostgreSQL 15 primary + two streaming standbys for the whole test session, on free loopback ports."""
import os
import shutil
import tempfile

import psycopg2
import pytest

from helios_proxy.devcluster import Cluster, USERS


@pytest.fixture(scope="session")
def cluster():
    base = tempfile.mkdtemp(prefix="helios-test-pg-")
    os.chmod(base, 0o755)
    c = Cluster(os.path.join(base, "cluster"), standbys=2,  # (pg_stat_statements: analytics compare with it)
                conf={"shared_preload_libraries": "'pg_stat_statements'"}).start()
    c.wait_replayed()
    yield c
    c.destroy()
    shutil.rmtree(base, ignore_errors=True)  # (the emptied folder too: nothing left in /tmp)


@pytest.fixture(scope="session")
def passwords():
    """Backend users with passwords: {user: password} (md5_user uses md5, scram_user SCRAM-only)."""
    return {user: password for user, (password, _) in USERS.items()}


@pytest.fixture
def direct(cluster):
    """A psycopg2 connection straight to the primary, autocommit, as postgres."""
    conn = psycopg2.connect(host="127.0.0.1", port=cluster.primary_port, user="postgres", dbname="postgres")
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def tls_files(cluster):
    """A self-signed certificate and key (for the proxy's clients), also enabled as the primary's TLS."""
    import pwd
    import shutil
    import subprocess
    base = os.path.join(cluster.base, "tls")
    os.makedirs(base, exist_ok=True)
    cert, key = os.path.join(base, "server.crt"), os.path.join(base, "server.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    pg_cert, pg_key = os.path.join(cluster.datadir(0), "server.crt"), os.path.join(cluster.datadir(0), "server.key")
    shutil.copy(cert, pg_cert)
    shutil.copy(key, pg_key)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for path in (pg_cert, pg_key):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(pg_key, 0o600)
    cluster.sql("ALTER SYSTEM SET ssl = on")
    cluster.sql("SELECT pg_reload_conf()")
    return {"cert": cert, "key": key}


@pytest.fixture(scope="session")
def pgbench(cluster):
    """pgbench(port, mode, clients, transactions) -> its stdout; tables initialized once."""
    import subprocess
    subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(cluster.primary_port), "-U", "postgres", "-i",
                    "-s", "1", "-q", "postgres"], check=True, capture_output=True, timeout=120)

    def run(port, mode, clients, transactions):
        out = subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-M", mode,
                              "-c", str(clients), "-j", "2", "-t", str(transactions), "postgres"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        total = clients * transactions
        assert f"number of transactions actually processed: {total}/{total}" in out.stdout
        assert "number of failed transactions: 0" in out.stdout
        return out.stdout
    return run
