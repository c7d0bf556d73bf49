"""A real PostgreSQL 15 primary + streaming standby for the whole test session, on free loopback ports."""
import os
import tempfile

import psycopg2
import pytest

from helios_proxy.devcluster import Cluster, USERS


@pytest.fixture(scope="session")
def cluster():
    base = tempfile.mkdtemp(prefix="helios-test-pg-")
    os.chmod(base, 0o755)
    c = Cluster(os.path.join(base, "cluster"), standbys=1).start()
    c.wait_replayed()
    yield c
    c.destroy()


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
