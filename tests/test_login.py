"""Login hardening: what an attacker or a rogue backend must not get from the proxy's authentication."""
import socket
import struct
import time

import psycopg2
import pytest

from helios_proxy.protocol import codec
from helios_proxy.protocol.scram import ScramClient, md5_hash, md5_response

from .test_bad_input import error_fields, read_all
from .fake_server import FakeServer
from .test_auth import userlist


def connect(proxy, user, password, dbname="postgres"):
    return psycopg2.connect(host="127.0.0.1", port=proxy.port, user=user, password=password, dbname=dbname,
                            connect_timeout=10)


def start_login(port, user, database="postgres"):
    """A raw connection that sent its startup packet: (socket, the authentication request body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(codec.startup_message({"user": user, "database": database}))
    head = s.recv(5)
    assert head[:1] in (b"R", b"E"), head
    body = b""
    need = struct.unpack("!i", head[1:5])[0] - 4
    while len(body) < need:
        body += s.recv(need - len(body))
    return s, head[:1], body


def scram_first(port, user):
    """The server-first-message a SCRAM login of user gets."""
    s, kind, body = start_login(port, user)
    assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10, body
    client = ScramClient(password="whatever")
    first = client.first().encode()
    s.sendall(codec.sasl_initial_response("SCRAM-SHA-256", first))
    head = s.recv(5)
    body = s.recv(struct.unpack("!i", head[1:5])[0] - 4)
    s.close()
    return body[4:].decode()


def test_auth_query_cannot_be_redirected_by_a_clients_search_path(start_proxy, tmp_path, direct):
    """An auth_user client's search_path (evil.pg_shadow first) must not change whose secret the
    auth query finds: it runs on connections of its own, search_path pg_catalog."""
    cur = direct.cursor()
    cur.execute("drop schema if exists evil cascade; create schema evil; "
                "create table evil.pg_shadow (usename name, passwd text, valuntil timestamptz)")
    cur.execute("insert into evil.pg_shadow values ('md5_user', %s, null)", (md5_hash("hacked", "md5_user"),))
    cur.execute("grant usage on schema evil to public; grant select on evil.pg_shadow to public")
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1},
                        auth={"method": "md5", "users_file": userlist(tmp_path, {"postgres": "pw"}),
                              "auth_user": "postgres",
                              "auth_query": "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"})
    attacker = connect(proxy, "postgres", "pw")
    attacker.autocommit = True
    attacker.cursor().execute("set search_path = evil, pg_catalog")  # follows it to every connection
    try:
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            connect(proxy, "md5_user", "hacked")
        assert connect(proxy, "md5_user", "md5-pass").closed == 0
    finally:
        attacker.close()
        direct.cursor().execute("drop schema evil cascade")


def test_auth_query_refuses_an_expired_role(start_proxy, tmp_path, direct):
    cur = direct.cursor()
    cur.execute("drop role if exists expired_user; create role expired_user login password 'old-pass' "
                "valid until '2001-01-01'")
    proxy = start_proxy(auth={"method": "md5", "users_file": userlist(tmp_path, {"postgres": "pw"}),
                              "auth_user": "postgres"})
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(proxy, "expired_user", "old-pass")
    assert connect(proxy, "md5_user", "md5-pass").closed == 0  # the default auth_query still works


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_an_empty_password_in_the_users_file_never_logs_in(start_proxy, tmp_path, method):
    # (postgres: the backend trusts it, so only the proxy's own check can refuse the login)
    proxy = start_proxy(auth={"method": method, "users_file": userlist(tmp_path, {"postgres": ""})})
    s, kind, body = start_login(proxy.port, "postgres")
    code = struct.unpack("!i", body[:4])[0]
    if code == 5:  # md5: the right answer for an empty password
        s.sendall(codec.password(md5_response(md5_hash("", "postgres"), body[4:8])))
    else:  # SCRAM with an empty password
        client = ScramClient(password="")
        s.sendall(codec.sasl_initial_response("SCRAM-SHA-256", client.first().encode()))
        head = s.recv(5)
        server_first = s.recv(struct.unpack("!i", head[1:5])[0] - 4)[4:].decode()
        s.sendall(codec.sasl_response(client.final(server_first).encode()))
    fields = error_fields(read_all(s))
    s.close()
    assert fields["C"] == "28P01", fields


def test_unknown_users_get_a_stable_salt_like_known_ones(start_proxy, tmp_path, passwords):
    """Unknown and known users cannot be told apart by their SCRAM salt (PostgreSQL's mock auth)."""
    salt = lambda text: dict(p.split("=", 1) for p in text.split(","))["s"]  # noqa: E731
    iterations = lambda text: dict(p.split("=", 1) for p in text.split(","))["i"]  # noqa: E731
    proxy = start_proxy(auth={"method": "scram-sha-256", "users_file": userlist(tmp_path, passwords)})
    for user in ("scram_user", "no_such_user", "another_ghost"):
        first, second = scram_first(proxy.port, user), scram_first(proxy.port, user)
        assert salt(first) == salt(second), user
        assert iterations(first) == "4096"
    assert salt(scram_first(proxy.port, "no_such_user")) != salt(scram_first(proxy.port, "another_ghost"))
    ghost, known = salt(scram_first(proxy.port, "no_such_user")), salt(scram_first(proxy.port, "scram_user"))
    proxy.stop()
    proxy.start()  # a restart (or another worker) changes neither: the key is not per process
    assert salt(scram_first(proxy.port, "no_such_user")) == ghost
    assert salt(scram_first(proxy.port, "scram_user")) == known


@pytest.mark.parametrize("sections, held", [
    ({"auth": {"max_unauthenticated_per_address": 5}}, 5),
    ({"server": {"max_client_conn": 8}}, 2),  # by default a quarter of max_client_conn: one address cannot fill it
])
def test_connections_still_logging_in_are_budgeted_per_address(start_proxy, sections, held):
    proxy = start_proxy(**sections)
    idle = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10) for _ in range(held)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        fields = error_fields(read_all(extra))
        extra.close()
        assert fields["C"] == "53300" and "still logging in" in fields["M"]
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    s, kind, body = start_login(proxy.port, "postgres")  # slots are freed when they leave
    assert kind == b"R"
    s.close()


def rogue_backend(request, received):
    """A server that answers every login with the authentication request given, notes in received
    what it gets, and answers a SCRAM first message with 30 million iterations."""
    def talk(conn):
        conn.recv(65536)
        conn.sendall(request)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            received.append(data)
            if data[:1] == b"p" and b"SCRAM-SHA-256" in data:  # SASLInitialResponse: a huge count
                nonce = data.split(b"r=", 1)[1].split(b"\0")[0].decode()
                first = f"r={nonce}abc,s=c2FsdHNhbHQ=,i=30000000".encode()
                conn.sendall(codec.authentication(11, first))
    return FakeServer(talk)


@pytest.mark.parametrize("case", ["cleartext", "scram iterations", "sasl continue first", "sasl final first"])
def test_a_rogue_backend_gets_no_cleartext_password_and_cannot_stall_the_proxy(start_proxy, tmp_path, case):
    request = {"cleartext": codec.authentication(3), "scram iterations": codec.authentication(10, b"SCRAM-SHA-256\0\0"),
               "sasl continue first": codec.authentication(11, b"r=x,s=c2FsdA==,i=4096"),
               "sasl final first": codec.authentication(12, b"v=AAAA")}[case]
    received = []
    rogue = rogue_backend(request, received)
    try:
        proxy = start_proxy(auth={"users_file": userlist(tmp_path, {"postgres": "secret-pass"})},
                            health={"interval": 60},
                            nodes=[{"name": "rogue", "host": "127.0.0.1", "port": rogue.port, "role": "primary"}])
        started = time.monotonic()
        s, kind, body = start_login(proxy.port, "postgres")
        fields = error_fields(read_all(s))
        s.close()
        assert time.monotonic() - started < 5
        assert fields["S"] == "FATAL", fields
        assert {"cleartext": "cleartext", "scram iterations": "max_scram_iterations"}.get(
            case, "before SASL began") in fields["M"], fields
        assert fields["C"] != "XX000"  # (a protocol violation of the server's, not an internal error)
        assert not any(b"secret-pass" in data for data in received)
    finally:
        rogue.close()


def test_failed_logins_reveal_no_database_and_leave_no_pool(start_proxy, tmp_path):
    proxy = start_proxy(auth={"method": "md5", "users_file": userlist(tmp_path, {"postgres": "pw"}),
                              "auth_user": "postgres"})
    messages = set()
    for database in ["postgres"] + [f"nosuch_{i}" for i in range(10)]:
        with pytest.raises(psycopg2.OperationalError) as raised:
            connect(proxy, "md5_user", "wrong", dbname=database)
        messages.add(str(raised.value).strip())
    assert len(messages) == 1 and "password authentication failed" in messages.pop()
    pools = proxy.api("GET", "/pools")[1]
    assert not [p for p in pools if p["database"].startswith("nosuch_")], pools


def test_a_tls_handshake_that_stalls_is_closed_at_the_login_timeout(start_proxy, tls_files):
    import struct
    proxy = start_proxy(server={"client_login_timeout": 1.5},
                        tls={"client_mode": "prefer", "client_cert_file": tls_files["cert"],
                             "client_key_file": tls_files["key"]})
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    s.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
    assert s.recv(1) == b"S"
    started = time.monotonic()  # ... and then no ClientHello
    assert s.recv(100) == b""  # closed by the proxy (recv would time out after 10 s otherwise)
    assert 1.0 < time.monotonic() - started < 6
    s.close()
