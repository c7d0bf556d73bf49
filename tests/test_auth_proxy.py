"""The auth proxy (helios_proxy/auth/): ordered [[auth.rules]], JSON Web Tokens and API keys as
passwords, refused in clear without TLS; the backend login stays the proxy's own credential."""
import datetime
import json
import subprocess
import time

import jwt
import psycopg2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fix_etcd import etcd  # noqa: F401 - a fixture
from tests.fix_ldap import ldap_server  # noqa: F401 - a fixture
from tests.fix_proxy import BIN
from tests.test_auth import userlist


def rsa_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, public


def token(key, sub, alg="RS256", **claims):
    now = datetime.datetime.now(datetime.timezone.utc)
    body = {"sub": sub, "exp": now + datetime.timedelta(minutes=5), "iss": "https://id.test/", **claims}
    return jwt.encode(body, key, algorithm=alg)


def login(proxy, user, password, sslmode="require", dbname="postgres"):
    conn = psycopg2.connect(host="127.0.0.1", port=proxy.port, user=user, password=password, dbname=dbname,
                            sslmode=sslmode, connect_timeout=10)
    cur = conn.cursor()
    cur.execute("select current_user")
    name = cur.fetchone()[0]
    conn.close()
    return name


def refused(proxy, user, password, code, **kw):
    with pytest.raises(psycopg2.OperationalError) as info:
        login(proxy, user, password, **kw)
    text = str(info.value)
    assert code == "28P01" and f'password authentication failed for user "{user}"' in text or \
        code == "28000" and ("pg_hba.conf" in text or "needs TLS" in text), text
    return text


class JsonEndpoint:
    """A loopback HTTP server answering every request with answer(method, headers, body) ->
    (status, JSON object); a context manager."""

    def __init__(self, answer):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def reply(self):
                length = int(self.headers.get("Content-Length") or 0)
                status, obj = answer(self.command, self.headers, self.rfile.read(length).decode())
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            do_GET = do_POST = reply  # noqa: N815 - http.server's names

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


@pytest.fixture
def tls(tls_files):
    return {"client_mode": "allow", "client_cert_file": tls_files["cert"], "client_key_file": tls_files["key"]}


def test_jwt_logs_in_with_a_valid_token_and_refuses_every_bad_one(start_proxy, tmp_path, tls, passwords):
    key, public = rsa_key()
    other, _ = rsa_key()
    (tmp_path / "jwt.pem").write_bytes(public)
    proxy = start_proxy(tls=tls, auth={
        "method": "scram-sha-256", "users_file": userlist(tmp_path, passwords),
        "rules": [{"user": "scram_user", "method": "jwt"}],
        "jwt": {"public_key_file": str(tmp_path / "jwt.pem"), "issuer": "https://id.test/", "leeway_s": 0},
        "map": {"external-scram": "scram_user"}})
    # the backend login is the proxy's own (users_file, SCRAM-only user): never the token
    assert login(proxy, "scram_user", token(key, "scram_user")) == "scram_user"
    assert login(proxy, "scram_user", token(key, "external-scram")) == "scram_user"  # through [auth.map]
    expired = token(key, "scram_user", exp=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(1))
    for bad in (expired, token(other, "scram_user"), token(key, "md5_user"), token(key, "scram_user", iss="x"),
                token(key, "scram_user", nbf=int(time.time()) + 600), token("s" * 32, "scram_user", alg="HS256"),
                jwt.encode({"sub": "scram_user"}, key, algorithm="RS256"),  # (no exp)
                jwt.encode({"sub": "scram_user", "exp": int(time.time()) + 60}, None, algorithm="none"),
                "not a token"):
        refused(proxy, "scram_user", bad, "28P01")
    refused(proxy, "scram_user", token(key, "scram_user"), "28000", sslmode="disable")  # a token in clear
    assert login(proxy, "md5_user", passwords["md5_user"]) == "md5_user"  # other users: [auth] method
    log = proxy.output()
    assert "method=jwt rule=0: accepted" in log and "ExpiredSignatureError" in log and "refused: no TLS" in log
    assert expired not in log  # (never the secret)


def test_api_keys_made_by_the_cli_log_in_until_revoked_or_expired(start_proxy, tmp_path, tls):
    keys = tmp_path / "keys.json"
    proxy = start_proxy(tls=tls, auth={"rules": [{"method": "api_key", "address": "127.0.0.0/8"}],
                                       "api_keys": {"file": str(keys)}})

    def cli(*args):
        out = subprocess.run([BIN, "apikey", *args, "-c", proxy.config_path], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()

    key = cli("create", "app")[-1]
    scoped = cli("create", "app", "--database", "app")[-1]
    assert login(proxy, "app", key) == "app"
    assert login(proxy, "app", scoped, dbname="app") == "app"
    refused(proxy, "app", scoped, "28P01")  # (its scope: database app only)
    refused(proxy, "app", key[:-2] + "xx", "28P01")
    refused(proxy, "postgres", key, "28P01")  # (app's key)
    assert key not in keys.read_text() and oct(keys.stat().st_mode & 0o777) == "0o600"
    key_id = key.split("_")[1]
    assert any(line.startswith(key_id) and "user=app" in line for line in cli("list"))
    cli("revoke", key_id)
    refused(proxy, "app", key, "28P01")
    late = cli("create", "app", "--days", "1")[-1]
    data = json.loads(keys.read_text())
    data["keys"][late.split("_")[1]]["expires"] = int(time.time()) - 10
    keys.write_text(json.dumps(data))
    refused(proxy, "app", late, "28P01")


def test_api_keys_of_a_fleet_live_in_etcd_and_hold_on_every_member(start_proxy, tls, etcd):  # noqa: F811
    """[fleet] dcs_url: `apikey create` at one member's config writes the key to etcd; every member
    lets it in within moments, and refuses it as soon as it is revoked."""
    auth = {"rules": [{"method": "api_key", "address": "127.0.0.0/8"}]}
    proxies = [start_proxy(tls=tls, auth=auth, fleet={"name": f"k{i}", "dcs_url": etcd.url}) for i in range(2)]

    def cli(*args):
        out = subprocess.run([BIN, "apikey", *args, "-c", proxies[0].config_path], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()

    def eventually(check):
        deadline = time.monotonic() + 2
        while True:
            try:
                return check()
            except (AssertionError, psycopg2.Error):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    key = cli("create", "app")[-1]
    assert eventually(lambda: login(proxies[1], "app", key)) == "app"
    assert login(proxies[0], "app", key) == "app"
    key_id = key.split("_")[1]
    assert any(line.startswith(key_id) for line in cli("list"))
    cli("revoke", key_id)
    eventually(lambda: refused(proxies[1], "app", key, "28P01"))
    refused(proxies[0], "app", key, "28P01")


def test_rules_are_ordered_first_match_wins(start_proxy, tmp_path, tls):
    secret = "an HS256 secret of at least thirty-two bytes"
    proxy = start_proxy(tls=tls, auth={
        "method": "reject",
        "rules": [{"database": "app", "user": "app", "method": "reject"},
                  {"user": "app", "address": "10.0.0.0/8", "method": "trust"},
                  {"user": "app", "method": "jwt", "allow_plaintext": True},
                  {"user": "post*", "method": "trust"}],
        "jwt": {"secret": secret, "algorithms": ["HS256"]}})
    refused(proxy, "app", "x", "28000", dbname="app")  # rule 0
    assert login(proxy, "app", token(secret, "app", alg="HS256"), sslmode="disable") == "app"  # rule 2, in clear
    refused(proxy, "app", "not a token", "28P01")  # (rule 1 is for another address)
    assert login(proxy, "postgres", "") == "postgres"  # rule 3
    refused(proxy, "md5_user", "x", "28000")  # no rule: [auth] method = reject


def test_auth_config_errors_name_the_key(tmp_path):
    from helios_proxy.config import load
    from helios_proxy.errors import ConfigError
    node = {"name": "p", "host": "127.0.0.1", "port": 5432}
    for auth, message in (({"rules": [{"method": "jwt"}]}, "auth.jwt: the jwt method needs"),
                          ({"method": "api_key"}, "auth.api_keys.file: required"),
                          ({"rules": [{"method": "trust", "address": "10.0.0"}]}, "auth.rules[0].address"),
                          ({"rules": [{"user": "x"}]}, "auth.rules[0].method: required"),
                          ({"jwt": {"public_key_file": "/nonexistent"}}, "auth.jwt.public_key_file"),
                          ({"map": {"a": 1}}, "auth.map: expected")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load({"nodes": [node], "auth": auth}, environ={})


def test_oauth2_introspection_lets_active_tokens_in_and_caches_the_answer(start_proxy, tls):
    import base64
    from urllib.parse import parse_qs
    answers = {"tok-good": {"active": True, "username": "app", "exp": int(time.time()) + 300},
               "tok-inactive": {"active": False}, "tok-other": {"active": True, "username": "postgres"},
               "tok-old": {"active": True, "username": "app", "exp": int(time.time()) - 5}}
    asked = []

    def introspect(method, headers, body):
        if headers.get("Authorization") != "Basic " + base64.b64encode(b"helios:s3cret").decode():
            return 401, {}
        token = parse_qs(body)["token"][0]
        asked.append(token)
        return 200, answers.get(token, {"active": False})

    with JsonEndpoint(introspect) as endpoint:
        proxy = start_proxy(tls=tls, auth={
            "rules": [{"user": "app", "method": "oauth2"}],
            "oauth2": {"introspection_url": f"{endpoint.url}/introspect", "client_id": "helios",
                       "client_secret": "s3cret"}})
        assert login(proxy, "app", "tok-good") == "app"
        assert login(proxy, "app", "tok-good") == "app"
        assert asked.count("tok-good") == 1  # (the answer is reused until the token's exp)
        for bad in ("tok-inactive", "tok-other", "tok-old", "tok-unknown"):
            refused(proxy, "app", bad, "28P01")
        assert "s3cret" not in json.dumps(proxy.api("GET", "/config")[1])


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificate_authority(base, name):
    base.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(base / "ca.key"), "-out",
            str(base / "ca.crt"), "-days", "2", "-subj", f"/CN={name}")
    return base


def client_certificate(ca, cn, subject=None, san=None):
    """A client certificate signed by ca: subject /CN=cn (or subject), with subjectAltName san if given."""
    name = cn + ("-san" if san else "") + ("-multi" if subject else "")
    key, csr, crt = ca / f"{name}.key", ca / f"{name}.csr", ca / f"{name}.crt"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj",
            subject or f"/CN={cn}")
    extra = []
    if san:
        ext = ca / f"{name}.ext"
        ext.write_text(f"subjectAltName = {san}\n")
        extra = ["-extfile", str(ext)]
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca / "ca.crt"), "-CAkey", str(ca / "ca.key"),
            "-CAcreateserial", "-out", str(crt), "-days", "2", *extra)
    key.chmod(0o600)
    return {"sslcert": str(crt), "sslkey": str(key)}


def test_client_certificates_signed_by_the_ca_log_in_as_their_cn(start_proxy, tmp_path, tls):
    ca = certificate_authority(tmp_path / "ca", "helios test CA")
    foreign = certificate_authority(tmp_path / "foreign", "someone else's CA")
    proxy = start_proxy(tls=tls, auth={"rules": [{"user": "app", "method": "cert"}],
                                       "cert": {"ca_file": str(ca / "ca.crt")}, "map": {"build-bot": "app"}})

    def cert_login(user, files, sslmode="require"):
        conn = psycopg2.connect(host="127.0.0.1", port=proxy.port, user=user, dbname="postgres", sslmode=sslmode,
                                connect_timeout=10, **files)
        cur = conn.cursor()
        cur.execute("select current_user")
        name = cur.fetchone()[0]
        conn.close()
        return name

    assert cert_login("app", client_certificate(ca, "app")) == "app"
    assert cert_login("app", client_certificate(ca, "build-bot")) == "app"  # through [auth.map]
    for files, sslmode, message in ((client_certificate(ca, "postgres"), "require", "certificate authentication failed"),
                                    ({}, "require", "certificate authentication failed"),
                                    ({}, "disable", "no encryption")):
        with pytest.raises(psycopg2.OperationalError, match=message):
            cert_login("app", files, sslmode)
    with pytest.raises(psycopg2.OperationalError):  # signed by another CA: the handshake fails
        cert_login("app", client_certificate(foreign, "app"))
    assert cert_login("postgres", {}) == "postgres"  # other users: no certificate asked of them


@pytest.mark.parametrize("how", ["simple bind", "search+bind"])
def test_ldap_checks_the_password_against_a_real_directory(start_proxy, tls, ldap_server, how):
    people = f"ou=people,{ldap_server['suffix']}"
    ldap = {"url": ldap_server["url"], "timeout_s": 3.0}
    if how == "simple bind":
        ldap["bind_dn"] = "uid={user}," + people
    else:
        ldap.update(base_dn=people, search_filter="(uid={user})",
                    search_bind_dn=f"cn=admin,{ldap_server['suffix']}", search_bind_password="admin-pass")
    proxy = start_proxy(tls=tls, auth={"rules": [{"user": "app", "method": "ldap"}], "ldap": ldap})
    assert login(proxy, "app", "app-ldap-pass") == "app"
    refused(proxy, "app", "wrong", "28P01")
    refused(proxy, "app", "ldap-pass", "28P01")  # (another entry's password)
    refused(proxy, "app", "app-ldap-pass", "28000", sslmode="disable")  # (a password in clear)
    assert "admin-pass" not in json.dumps(proxy.api("GET", "/config")[1])


def test_jwt_keys_from_a_jwks_url_are_fetched_and_chosen_by_kid(start_proxy, tls):
    from jwt.algorithms import RSAAlgorithm
    first, _ = rsa_key()
    second, _ = rsa_key()
    keys = []
    for kid, key in (("k1", first), ("k2", second)):
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    fetched = []

    def key_set(method, headers, body):
        fetched.append(method)
        return 200, {"keys": keys}

    with JsonEndpoint(key_set) as endpoint:
        proxy = start_proxy(tls=tls, auth={"rules": [{"user": "app", "method": "jwt"}], "jwt": {
            "jwks_url": f"{endpoint.url}/jwks.json", "issuer": "https://id.test/"}})
        for kid, key in (("k1", first), ("k2", second), ("k1", first)):
            signed = jwt.encode({"sub": "app", "iss": "https://id.test/", "exp": int(time.time()) + 60}, key,
                                algorithm="RS256", headers={"kid": kid})
            assert login(proxy, "app", signed) == "app"
        refused(proxy, "app", jwt.encode({"sub": "app", "iss": "https://id.test/", "exp": int(time.time()) + 60},
                                         second, algorithm="RS256", headers={"kid": "k1"}), "28P01")
        assert len(fetched) == 1  # (the key set is cached)


@pytest.mark.parametrize("use_san", [False, True])
def test_a_certificate_logs_in_by_its_cn_only_unless_sans_are_allowed(start_proxy, tmp_path, tls, use_san):
    ca = certificate_authority(tmp_path / "ca", "helios test CA")
    proxy = start_proxy(tls=tls, auth={"rules": [{"method": "cert", "address": "127.0.0.0/8"}],
                                       "cert": {"ca_file": str(ca / "ca.crt"), "use_san": use_san}})

    def cert_login(user, files):
        conn = psycopg2.connect(host="127.0.0.1", port=proxy.port, user=user, dbname="postgres", sslmode="require",
                                connect_timeout=10, **files)
        conn.close()

    cert_login("app", client_certificate(ca, "app"))
    for files in (client_certificate(ca, "mallory", san="DNS:postgres"),
                  client_certificate(ca, "mallory", san="email:postgres")):
        if use_san:  # (the operator said SANs name users)
            cert_login("postgres", files)
        else:
            with pytest.raises(psycopg2.OperationalError, match="certificate authentication failed"):
                cert_login("postgres", files)
    two_cns = client_certificate(ca, "mallory", subject="/CN=mallory/CN=postgres")
    for user in ("postgres", "mallory"):
        with pytest.raises(psycopg2.OperationalError, match="certificate authentication failed"):
            cert_login(user, two_cns)


def test_a_token_method_over_plain_tcp_says_it_needs_tls(start_proxy, tmp_path, tls):
    keys = tmp_path / "keys.json"
    proxy = start_proxy(tls=tls, auth={"rules": [{"method": "api_key", "address": "127.0.0.0/8"}],
                                       "api_keys": {"file": str(keys)}})
    with pytest.raises(psycopg2.OperationalError) as e:
        psycopg2.connect(host="127.0.0.1", port=proxy.port, user="app", dbname="postgres", sslmode="disable",
                         password="x", connect_timeout=10)
    assert "api_key method needs TLS" in str(e.value) and "pg_hba.conf" not in str(e.value)


def test_an_unknown_api_key_id_takes_as_long_as_a_known_one(start_proxy, tmp_path, tls):
    keys = tmp_path / "keys.json"
    proxy = start_proxy(tls=tls, auth={"rules": [{"method": "api_key", "address": "127.0.0.0/8"}],
                                       "api_keys": {"file": str(keys)}})
    out = subprocess.run([BIN, "apikey", "create", "app", "-c", proxy.config_path], capture_output=True, text=True,
                         timeout=60)
    key = out.stdout.strip().splitlines()[-1]
    known_id_wrong_secret = key[:-4] + "xxxx"
    prefix, key_id, _ = key.split("_", 2)
    unknown_id = f"{prefix}_{'0' * len(key_id)}_{'y' * 43}"

    def refusal_time(password):
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError):
            login(proxy, "app", password)
        return time.monotonic() - started
    known = sorted(refusal_time(known_id_wrong_secret) for _ in range(5))[2]
    unknown = sorted(refusal_time(unknown_id) for _ in range(5))[2]
    assert unknown > 0.5 * known, (unknown, known)  # (medians; was 0.5 ms against 29 ms)


def test_a_jwt_without_kid_is_tried_against_every_key_and_the_public_key_file(start_proxy, tmp_path, tls):
    from jwt.algorithms import RSAAlgorithm
    first, _ = rsa_key()
    second, _ = rsa_key()
    third, third_public = rsa_key()
    stranger, _ = rsa_key()
    jwks = {"keys": [{**json.loads(RSAAlgorithm.to_jwk(k.public_key())), "kid": kid, "use": "sig", "alg": "RS256"}
                     for kid, k in (("k1", first), ("k2", second))]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    (tmp_path / "pub.pem").write_bytes(third_public)
    proxy = start_proxy(tls=tls, auth={"rules": [{"user": "app", "method": "jwt"}], "jwt": {
        "jwks_file": str(tmp_path / "jwks.json"), "public_key_file": str(tmp_path / "pub.pem")}})

    def token(key, **headers):
        return jwt.encode({"sub": "app", "exp": int(time.time()) + 60}, key, algorithm="RS256", headers=headers or None)
    for key in (first, second, third):  # no kid: each key of the set, then the public key file
        assert login(proxy, "app", token(key)) == "app"
    assert login(proxy, "app", token(second, kid="k2")) == "app"
    refused(proxy, "app", token(stranger), "28P01")
    refused(proxy, "app", token(second, kid="k1"), "28P01")  # (a kid names the one key to use)
