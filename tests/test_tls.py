"""TLS towards clients (the proxy as TLS server) and towards backends."""
import psycopg2
import pytest


def test_client_tls_prefer_encrypts_when_asked(start_proxy, tls_files):
    proxy = start_proxy(tls={"client_mode": "prefer", "client_cert_file": tls_files["cert"],
                             "client_key_file": tls_files["key"]})
    conn = proxy.connect(sslmode="require")
    assert conn.info.ssl_in_use
    cur = conn.cursor()
    cur.execute("select count(*) from generate_series(1, 100000)")
    assert cur.fetchone()[0] == 100000
    conn.close()
    plain = proxy.connect(sslmode="disable")
    assert not plain.info.ssl_in_use
    plain.close()


def test_client_tls_verify_full_against_proxy_cert(start_proxy, tls_files):
    proxy = start_proxy(tls={"client_mode": "require", "client_cert_file": tls_files["cert"],
                             "client_key_file": tls_files["key"]})
    conn = proxy.connect(sslmode="verify-full", sslrootcert=tls_files["cert"])
    assert conn.info.ssl_in_use
    conn.close()


def test_client_tls_require_rejects_plaintext(start_proxy, tls_files):
    proxy = start_proxy(tls={"client_mode": "require", "client_cert_file": tls_files["cert"],
                             "client_key_file": tls_files["key"]})
    with pytest.raises(psycopg2.OperationalError, match="TLS is required"):
        proxy.connect(sslmode="disable")


def test_client_tls_disabled_answers_no(start_proxy):
    proxy = start_proxy()
    with pytest.raises(psycopg2.OperationalError, match="does not support SSL"):
        proxy.connect(sslmode="require")
    assert not proxy.connect(sslmode="prefer").info.ssl_in_use


def test_backend_tls_require(start_proxy, tls_files):
    proxy = start_proxy(tls={"server_mode": "require"})
    cur = proxy.connect().cursor()
    cur.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
    assert cur.fetchone()[0] is True


def test_backend_tls_verify_full(start_proxy, tls_files):
    proxy = start_proxy(tls={"server_mode": "verify-full", "server_ca_file": tls_files["cert"]})
    cur = proxy.connect().cursor()
    cur.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
    assert cur.fetchone()[0] is True


def test_backend_tls_required_but_unsupported_is_a_clear_error(start_proxy, cluster, tls_files):
    standby = {"name": "standby1", "host": "127.0.0.1", "port": cluster.ports[1], "role": "primary"}
    proxy = start_proxy(tls={"server_mode": "require"}, nodes=[standby], failover={"buffer_timeout": 1})
    with pytest.raises(psycopg2.OperationalError, match="does not support TLS"):
        proxy.connect()


def test_client_tls_with_transaction_pooling(start_proxy, tls_files):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1},
                        tls={"client_mode": "require", "client_cert_file": tls_files["cert"],
                             "client_key_file": tls_files["key"]})
    a, b = proxy.connect(sslmode="require"), proxy.connect(sslmode="require")
    for conn in (a, b, a, b):
        cur = conn.cursor()
        cur.execute("select count(*) from generate_series(1, 50000)")
        assert cur.fetchone()[0] == 50000
        conn.commit()


def test_beyond_max_client_conn_no_tls_handshake_is_spent(start_proxy, tls_files):
    """A connection over max_client_conn is refused before TLS: its SSLRequest gets N, then 53300."""
    from helios_proxy.protocol import codec, messages as m
    from .wire import Wire, error_of
    proxy = start_proxy(server={"max_client_conn": 1},
                        tls={"client_mode": "prefer", "client_cert_file": tls_files["cert"],
                             "client_key_file": tls_files["key"]})
    held = proxy.connect(sslmode="require")
    w = Wire(proxy.port)
    try:
        w.send(codec.special_request(m.SSL_REQUEST_CODE))
        assert w.sock.recv(1) == b"N"
        fields = error_of(w.startup(user="postgres", database="postgres"))
        assert (fields["S"], fields["C"]) == ("FATAL", "53300") and "max_client_conn" in fields["M"]
    finally:
        w.close()
    with pytest.raises(psycopg2.OperationalError, match="no more connections allowed"):
        proxy.connect(sslmode="prefer")
    held.close()


@pytest.mark.parametrize("mode", ["require", "prefer"])
def test_backend_tls_with_transaction_pooling(start_proxy, tls_files, mode):
    """The fast path (frontend/fastpath.py) writes to a server's kernel socket: a TLS server
    connection is left to the greenlet, which speaks TLS on it (plaintext there closed it)."""
    proxy = start_proxy(tls={"server_mode": mode}, pool={"mode": "transaction", "max_size": 2})
    conns = [proxy.connect() for _ in range(3)]
    for conn in conns:
        conn.autocommit = True
    for i in range(4):
        for conn in conns:
            cur = conn.cursor()
            cur.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
            assert cur.fetchone()[0] is True
            cur.execute("select %s::int + 1", (i,))  # (psycopg2 sends its parameters inline: a simple Query)
            assert cur.fetchone()[0] == i + 1
    for conn in conns:
        conn.close()
    import psycopg
    with psycopg.connect(host="127.0.0.1", port=proxy.port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:  # the extended protocol: an unnamed batch
        for i in range(4):
            assert conn.execute("select %s::int * 2, (select ssl from pg_stat_ssl where pid = pg_backend_pid())",
                                (i,)).fetchone() == (i * 2, True)
