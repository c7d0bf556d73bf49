"""Client authentication by the proxy (trust, md5, SCRAM) and backend login (md5, SCRAM, SCRAM passthrough)."""
import psycopg
import psycopg2
import pytest

from helios_proxy.protocol.scram import md5_hash


def userlist(tmp_path, users):
    path = tmp_path / "userlist.txt"
    path.write_text("".join(f'"{u}" "{s}"\n' for u, s in users.items()))
    return str(path)


def connect(proxy, user, password, dbname="postgres"):
    return psycopg2.connect(host="127.0.0.1", port=proxy.port, user=user, password=password, dbname=dbname,
                            connect_timeout=10)


def current_user(conn):
    cur = conn.cursor()
    cur.execute("select current_user")
    return cur.fetchone()[0]


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_plaintext_userlist_logs_in_to_scram_and_md5_backends(start_proxy, tmp_path, passwords, method):
    path = userlist(tmp_path, passwords)
    proxy = start_proxy(auth={"method": method, "users_file": path})
    for user, password in passwords.items():
        assert current_user(connect(proxy, user, password)) == user
        with pytest.raises(psycopg2.OperationalError, match=f'password authentication failed for user "{user}"'):
            connect(proxy, user, "wrong")
    with pytest.raises(psycopg2.OperationalError, match='password authentication failed for user "nobody"'):
        connect(proxy, "nobody", "x")


def test_client_sees_the_method_it_asked_for(start_proxy, tmp_path, passwords):
    """psycopg 3 refuses to send a cleartext or md5 password when told to require SCRAM."""
    proxy = start_proxy(auth={"method": "scram-sha-256", "users_file": userlist(tmp_path, passwords)})
    with psycopg.connect(proxy.dsn(user="scram_user", password="scram-pass"),
                         require_auth="scram-sha-256") as conn:
        assert conn.execute("select current_user").fetchone()[0] == "scram_user"


def test_scram_secret_in_userlist_passes_through_to_scram_backend(start_proxy, tmp_path, direct):
    """The proxy never sees the password: it verifies the client's proof and reuses its ClientKey."""
    cur = direct.cursor()
    cur.execute("select rolpassword from pg_authid where rolname = 'scram_user'")
    secret = cur.fetchone()[0]
    assert secret.startswith("SCRAM-SHA-256$")
    proxy = start_proxy(auth={"method": "scram-sha-256", "users_file": userlist(tmp_path, {"scram_user": secret})})
    assert current_user(connect(proxy, "scram_user", "scram-pass")) == "scram_user"
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(proxy, "scram_user", "scram-wrong")


def test_md5_secret_in_userlist_logs_in_to_md5_backend(start_proxy, tmp_path):
    proxy = start_proxy(auth={"method": "md5", "users_file": userlist(tmp_path, {
        "md5_user": md5_hash("md5-pass", "md5_user")})})
    assert current_user(connect(proxy, "md5_user", "md5-pass")) == "md5_user"


def test_scram_method_with_only_an_md5_secret_fails_like_postgres(start_proxy, tmp_path):
    proxy = start_proxy(auth={"method": "scram-sha-256", "users_file": userlist(tmp_path, {
        "md5_user": md5_hash("md5-pass", "md5_user")})})
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(proxy, "md5_user", "md5-pass")


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_auth_query_with_bind_parameter(start_proxy, tmp_path, method):
    """Users missing from users_file are looked up on the backend as auth_user, as PostgreSQL would check them:
    a SCRAM secret always means a SCRAM exchange; an md5 secret works only under md5."""
    proxy = start_proxy(auth={"method": method, "auth_user": "postgres", "users_file": userlist(tmp_path, {})})
    assert current_user(connect(proxy, "scram_user", "scram-pass")) == "scram_user"
    if method == "md5":
        assert current_user(connect(proxy, "md5_user", "md5-pass")) == "md5_user"
    else:
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            connect(proxy, "md5_user", "md5-pass")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(proxy, "scram_user", "nope")
    # A name made to break string formatting is just a user that does not exist.
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect(proxy, "x' or '1'='1", "nope")


def test_trust_without_password_for_backend_that_wants_one(start_proxy):
    proxy = start_proxy()
    with pytest.raises(psycopg2.OperationalError, match='password authentication failed for user "scram_user"'):
        connect(proxy, "scram_user", None)
    assert current_user(connect(proxy, "postgres", None)) == "postgres"


def test_no_passwords_in_log(start_proxy, tmp_path, passwords):
    proxy = start_proxy(auth={"method": "md5", "users_file": userlist(tmp_path, passwords)},
                        log={"level": "debug"})
    connect(proxy, "scram_user", "scram-pass").close()
    with pytest.raises(psycopg2.OperationalError):
        connect(proxy, "md5_user", "bad-secret-xyz")
    log = proxy.output()
    assert "scram_user" in log
    for secret in ("scram-pass", "md5-pass", "bad-secret-xyz", "SCRAM-SHA-256$"):
        assert secret not in log
