"""Prepared statements: the client's names, the server's names, the LRU cap, and staleness."""
import pytest

from helios_proxy.backend.statements import ServerStatements, invalidate, invalidate_all
from helios_proxy.errors import ProxyError
from helios_proxy.frontend.statements import bind_names
from helios_proxy.pool import prepared
from helios_proxy.pool.prepared import StatementBook
from helios_proxy.protocol import codec


def parse_body(name, sql):
    return codec.parse(sql, name)[5:]


def test_the_same_text_gets_the_same_server_name_for_every_client():
    a, b = StatementBook(), StatementBook()
    _, one = a.parse(parse_body("s1", "select $1"))
    _, two = b.parse(parse_body("other", "select $1"))
    _, three = b.parse(parse_body("third", "select $2"))
    assert one.server_name == two.server_name != three.server_name


def test_client_names_follow_postgresql_errors():
    client = StatementBook()
    client.parse(parse_body("s1", "select 1"))
    with pytest.raises(ProxyError) as dup:
        client.parse(parse_body("s1", "select 2"))
    assert dup.value.sqlstate == "42P05"
    with pytest.raises(ProxyError) as missing:
        client.lookup("nope")
    assert missing.value.sqlstate == "26000"


def test_bind_is_renamed_and_keeps_its_parameters():
    body = codec.bind(["42"], portal="p", statement="s1")[5:]
    portal, name, params = bind_names(body)
    assert name == "s1"
    renamed = prepared.bind(body[:portal], prepared.Statement("helios_x", b""), body[params:])
    assert renamed == codec.bind(["42"], portal="p", statement="helios_x")
    assert bind_names(codec.bind([], statement="")[5:])[1] == ""  # (the unnamed statement: not translated)


def test_server_statements_evict_the_least_recently_used_beyond_the_cap():
    held = ServerStatements(cap=2)
    assert held.add("a") == [] and held.add("b") == []
    assert "a" in held  # used: now the most recent
    assert held.add("c") == ["b"]
    assert "a" in held and "c" in held and "b" not in held


def test_an_invalidated_statement_is_stale_and_parsed_again_after_closing():
    held = ServerStatements(cap=10)
    held.add("s")
    invalidate(["s"])
    assert "s" not in held
    assert held.add("s") == ["s"]  # its stale copy is closed first
    assert "s" in held
    invalidate_all()  # a schema change through the proxy: every statement
    assert "s" not in held
