"""SCRAM-SHA-256 server and client against each other and against PostgreSQL's stored secrets."""
import pytest

from helios_proxy.protocol.scram import ScramClient, ScramSecret, ScramServer, md5_hash, md5_response, saslprep


def exchange(secret, client):
    server = ScramServer(secret)
    server_first = server.first(client.first())
    server_final = server.final(client.final(server_first))
    client.verify(server_final)
    return server


def test_password_login_and_recovered_client_key_login():
    secret = ScramSecret.from_password("pencil")
    server = exchange(secret, ScramClient(password="pencil"))
    # The key recovered from that proof logs in to a server holding the same secret.
    exchange(secret, ScramClient(client_key=server.client_key, server_key=secret.server_key))


def test_wrong_password_is_refused():
    with pytest.raises(PermissionError):
        exchange(ScramSecret.from_password("pencil"), ScramClient(password="pen"))


def test_secret_text_roundtrip_and_rejects_other_text():
    secret = ScramSecret.from_password("x", salt=b"0123456789abcdef", iterations=4096)
    assert ScramSecret.parse(str(secret)) == secret
    assert ScramSecret.parse("md5abc") is None
    assert ScramSecret.parse("SCRAM-SHA-256$bad") is None


def test_server_refuses_channel_binding_it_did_not_offer():
    server = ScramServer(ScramSecret.from_password("x"))
    with pytest.raises(ValueError):
        server.first("p=tls-server-end-point,,n=,r=abc")


def test_saslprep_maps_non_ascii_spaces():
    assert saslprep("a\u00a0b") == "a b"
    assert saslprep("plain") == "plain"


def test_md5_matches_postgres_formula():
    assert md5_hash("md5-pass", "md5_user") == "md5" + __import__("hashlib").md5(b"md5-passmd5_user").hexdigest()
    assert md5_response(md5_hash("p", "u"), b"salt").startswith("md5")
