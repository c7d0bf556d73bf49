"""Bad input gets a clear ErrorResponse or a clean close; the proxy stays up and other sessions are untouched."""
import os
import socket
import struct
import time

import psycopg2
import pytest

from helios_proxy.protocol import codec

from .background import Probe
from .fake_server import FakeServer


def raw_connect(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    return s


def read_all(s, limit=65536):
    data = b""
    try:
        while len(data) < limit:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def error_fields(data):
    """The fields of the first ErrorResponse among the messages in data."""
    pos = 0
    while pos + 5 <= len(data):
        length = struct.unpack_from("!i", data, pos + 1)[0]
        if data[pos:pos + 1] == b"E":
            return codec.parse_fields(data[pos + 5:pos + 1 + length])
        pos += 1 + length
    raise AssertionError(f"no ErrorResponse in {data[:300]!r}")


@pytest.fixture(scope="module")
def survivor(proxy):
    """A session opened before the abuse, checked after it."""
    conn = proxy.connect()
    conn.autocommit = True
    yield conn
    cur = conn.cursor()
    cur.execute("select 'survived'")
    assert cur.fetchone()[0] == "survived"
    conn.close()


CASES = {
    "random bytes": os.urandom(64),
    "zero length": struct.pack("!i", 0),
    "negative length": struct.pack("!i", -5),
    "2 GB length": struct.pack("!ii", 2**31 - 1, 196608),
    "length just over limit": struct.pack("!ii", 10005, 196608),  # 10000 + the length word is the most
    "password before startup": b"p\x00\x00\x00\x08abc\x00",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_garbage_startup_is_refused_with_protocol_violation(proxy, survivor, name):
    s = raw_connect(proxy)
    s.sendall(CASES[name])
    data = read_all(s)
    s.close()
    if data:  # random bytes may also look like a short, incomplete packet: then a clean close is right
        fields = error_fields(data)
        assert fields["S"] == "FATAL" and fields["C"] in ("08P01", "0A000"), fields
    assert psycopg2.connect(proxy.dsn()).closed == 0


def test_unknown_protocol_version(proxy, survivor):
    s = raw_connect(proxy)
    body = struct.pack("!i", 2 << 16) + b"user\0postgres\0\0"
    s.sendall(struct.pack("!i", len(body) + 4) + body)
    fields = error_fields(read_all(s))
    assert fields["C"] == "0A000" and "unsupported frontend protocol 2.0" in fields["M"]


def test_newer_minor_version_gets_negotiate_protocol_version(proxy, survivor):
    s = raw_connect(proxy)
    body = struct.pack("!i", (3 << 16) | 5) + b"user\0postgres\0_pq_.fancy\0on\0\0"
    s.sendall(struct.pack("!i", len(body) + 4) + body)
    data = b""
    while not data.endswith(codec.ready_for_query()):
        data += s.recv(4096)
    assert data[:1] == b"v"
    version, count = struct.unpack_from("!ii", data, 5)
    assert (version, count) == (3 << 16, 1) and b"_pq_.fancy\0" in data  # the newest we speak: 3.0
    s.sendall(codec.TERMINATE)
    s.close()


def test_ssl_request_followed_by_plaintext_in_same_packet(proxy, survivor):
    s = raw_connect(proxy)
    startup = codec.startup_message({"user": "postgres", "database": "postgres"})
    s.sendall(codec.special_request(80877103) + startup)
    data = read_all(s)
    assert b"SCRAM" not in data and b"R\x00" not in data  # the startup packet was never processed
    fields = error_fields(data)
    assert fields["C"] == "08P01" and "unencrypted data after SSL request" in fields["M"]


def test_truncated_message_then_disconnect(proxy, survivor):
    s = raw_connect(proxy)
    s.sendall(codec.startup_message({"user": "postgres", "database": "postgres"}))
    while not s.recv(4096).endswith(codec.ready_for_query()):
        pass
    s.sendall(b"Q\x00\x00\x10\x00select")  # says 4096 bytes, sends 6
    s.close()
    time.sleep(0.3)


def test_invalid_message_length_after_login(proxy, survivor):
    s = raw_connect(proxy)
    s.sendall(codec.startup_message({"user": "postgres", "database": "postgres"}))
    data = b""
    while not data.endswith(codec.ready_for_query()):
        data += s.recv(4096)
    s.sendall(b"Q\x00\x00\x00\x02")
    fields = error_fields(read_all(s))
    assert fields["C"] == "08P01" and "invalid message length" in fields["M"]


def test_disconnect_mid_query_closes_or_cleans_the_server(proxy, survivor, direct):
    conn = proxy.connect(application_name="mid-query")
    conn.autocommit = True
    pid = conn.get_backend_pid()
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    sock.sendall(codec.query("select pg_sleep(30)"))
    time.sleep(0.3)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    assert_backend_not_dirty(direct, pid)


def test_disconnect_mid_transaction_rolls_back(proxy, survivor, direct):
    direct.cursor().execute("drop table if exists dirty_test; create table dirty_test(i int)")
    conn = proxy.connect(application_name="mid-tx")
    pid = conn.get_backend_pid()
    conn.cursor().execute("insert into dirty_test values (1)")  # open transaction, not committed
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    assert_backend_not_dirty(direct, pid)
    cur = direct.cursor()
    cur.execute("select count(*) from dirty_test")
    assert cur.fetchone()[0] == 0
    # The next client may get that same server connection, and it must be clean.
    fresh = proxy.connect()
    fresh.autocommit = True  # so a transaction left open on the server would show in now()
    cur = fresh.cursor()
    cur.execute("select current_setting('application_name'), now() = statement_timestamp()")
    assert cur.fetchone() == ("", True)


def assert_backend_not_dirty(direct, pid, timeout=10):
    """The backend is gone, or idle outside a transaction with its session reset."""
    cur = direct.cursor()
    deadline = time.time() + timeout
    while time.time() < deadline:
        cur.execute("select state, application_name from pg_stat_activity where pid = %s", (pid,))
        row = cur.fetchone()
        if row is None or (row[0] == "idle" and row[1] == ""):
            return
        time.sleep(0.1)
    pytest.fail(f"backend {pid} left dirty: {row}")


def test_gssenc_request_is_declined_then_login_works(proxy):
    s = raw_connect(proxy)
    s.sendall(codec.special_request(80877104))
    assert s.recv(1) == b"N"
    s.sendall(codec.startup_message({"user": "postgres", "database": "postgres"}))
    data = b""
    while not data.endswith(codec.ready_for_query()):
        data += s.recv(4096)
    s.close()


def test_cancel_request_with_unknown_key_is_ignored(proxy, survivor):
    s = raw_connect(proxy)
    s.sendall(codec.special_request(80877102, 12345, 67890))
    assert read_all(s) == b""
    s.close()


def login(port, **params):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(codec.startup_message({"user": "postgres", "database": "postgres", **params}))
    data = b""
    while not data.endswith(codec.ready_for_query()):
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    return s


def test_startup_packet_of_10004_bytes_is_accepted_like_postgres(proxy):
    params = {"user": "postgres", "database": "postgres", "application_name": ""}
    params["application_name"] = "x" * (10004 - len(codec.startup_message(params)))
    packet = codec.startup_message(params)
    assert len(packet) == 10004
    s = raw_connect(proxy)
    s.sendall(packet)
    data = b""
    while not data.endswith(codec.ready_for_query()):
        chunk = s.recv(65536)
        assert chunk and b"E" != chunk[:1], chunk
        data += chunk
    s.close()


@pytest.fixture(scope="module")
def txn_proxy(cluster, tmp_path_factory):
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path_factory.mktemp("txn")), cluster, pool={"mode": "transaction", "max_size": 2})
    p.start()
    yield p
    p.stop()  # asserts no Traceback in its log


MALFORMED = {
    "empty Query": b"Q\0\0\0\x04",
    "Query without terminator": codec.message(b"Q", b"select 1"),
    "empty Parse": b"P\0\0\0\x04",
    "Parse without query terminator": codec.message(b"P", b"s1\0select"),
    "named Parse without parameter count": codec.message(b"P", b"s1\0select 1\0"),
    "empty Bind": b"B\0\0\0\x04",
    "Bind without statement terminator": codec.message(b"B", b"\0s1x"),
    "empty Describe": b"D\0\0\0\x04",
    "Describe of a statement without terminator": codec.message(b"D", b"Ss1"),
    "empty Close": b"C\0\0\0\x04",
    "Close of a statement without terminator": codec.message(b"C", b"Ss1"),
    "Execute without terminator": codec.message(b"E", b"ab"),
}


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_message_gets_protocol_violation_and_close(proxy, txn_proxy, mode, name):
    target = proxy if mode == "session" else txn_proxy
    s = login(target.port)
    s.sendall(MALFORMED[name] + codec.SYNC)
    data = b""
    while not data.endswith(codec.ready_for_query()):  # PostgreSQL's own answer ends so; ours closes
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    fields = error_fields(data)
    assert fields["C"] == "08P01", fields
    if fields["S"] == "FATAL":  # the proxy had to read it: one FATAL, then the connection closes
        assert fields["M"] == "invalid message format" and data.count(b"FATAL\0") == 2, data
    # else: forwarded (nothing the proxy had to read was missing): PostgreSQL's own 08P01 answer
    assert target.query("select 'still up'") == [("still up",)]


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_unknown_message_type_is_refused_and_never_reaches_another_client(proxy, txn_proxy, mode):
    """A query and a message of an unknown type in one write: FATAL 08P01 for that client only,
    while other clients of the same pool go on without an error (a storm of both, bounded)."""
    target = proxy if mode == "session" else txn_proxy
    probes = [Probe(target.connect) for _ in range(3)]
    with probes[0], probes[1], probes[2]:
        for _ in range(40):
            s = login(target.port)
            s.sendall(codec.query("select pg_sleep(0.001)") + b"y\0\0\0\x04")
            data = read_all(s)
            s.close()
            fields = error_fields(data)
            assert fields["C"] == "08P01" and fields["M"] == "invalid frontend message type 121", fields
    for probe in probes:
        assert not probe.errors and probe.times, probe.errors[:3]


@pytest.mark.parametrize("method,message", [
    ("md5", b"p\0\0\0\x04"),                               # no password at all
    ("md5", b"p\0\0\0\x07abc"),                             # no terminator
    ("scram-sha-256", b"p\0\0\0\x12SCRAM-SHA-256\0"),         # no length of the client-first message
    ("scram-sha-256", b"p\0\0\0\x08SCRA"),                  # no terminator
])
def test_short_password_messages_get_protocol_violation(start_proxy, tmp_path, passwords, method, message):
    path = tmp_path / "userlist.txt"
    path.write_text("".join(f'"{u}" "{p}"\n' for u, p in passwords.items()))
    target = start_proxy(auth={"method": method, "users_file": str(path)})
    s = raw_connect(target)
    s.sendall(codec.startup_message({"user": "md5_user", "database": "postgres"}))
    assert s.recv(4096)[:1] == b"R"  # the authentication request
    s.sendall(message)
    data = read_all(s)
    s.close()
    fields = error_fields(data)
    assert fields["S"] == "FATAL" and fields["C"] == "08P01", fields
    assert data.count(b"FATAL\0") == 2  # one FATAL
    # start_proxy's teardown asserts that the log holds no Traceback


def test_gssenc_request_followed_by_plaintext_names_the_gssapi_request(proxy, survivor):
    s = raw_connect(proxy)
    s.sendall(codec.special_request(80877104) + codec.startup_message({"user": "postgres"}))
    fields = error_fields(read_all(s))
    s.close()
    assert fields["C"] == "08P01" and fields["M"] == "received unencrypted data after GSSAPI encryption request"


def malformed_backend(reply, login_extra=b""):
    """A server that logs clients in like PostgreSQL (trust), then answers every Query with reply."""
    def talk(conn):
        conn.recv(65536)  # the startup packet
        conn.sendall(codec.authentication(0) + codec.parameter_status("server_version", "15.0")
                     + login_extra + codec.backend_key_data(7, 7) + codec.ready_for_query())
        while True:
            data = conn.recv(65536)
            if not data or data[:1] == b"X":
                return
            if data[:1] == b"Q":
                conn.sendall(reply)
    return FakeServer(talk)


@pytest.mark.parametrize("name,reply,login_extra", [
    ("ParameterStatus without terminators", b"S\0\0\0\x07abc", b""),
    ("length below 4", b"Z\0\0\0\x02", b""),
    ("malformed ParameterStatus at login", b"", b"S\0\0\0\x07abc"),
])
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_malformed_backend_replies_cost_one_log_line_not_a_traceback(start_proxy, name, reply, login_extra, mode):
    backend = malformed_backend(reply, login_extra)
    try:
        proxy = start_proxy(pool={"mode": mode, "max_size": 2}, health={"interval": 60},
                            nodes=[{"name": "fake", "host": "127.0.0.1", "port": backend.port, "role": "primary"}])
        for _ in range(2):
            s = raw_connect(proxy)
            s.sendall(codec.startup_message({"user": "postgres", "database": "postgres"}) + codec.query("select 1"))
            data = read_all(s)
            s.close()
            fields = error_fields(data)
            assert fields["S"] == "FATAL" and fields["C"] in ("08006", "08P01"), fields
        assert "Traceback" not in proxy.output()
    finally:
        backend.close()
