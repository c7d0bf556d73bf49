"""The GraphQL gateway ([graphql], graphql/) end to end: a schema from the catalog as the request's
role, nested levels in one statement each (counted with pg_stat_statements), object and array
relationships, filters, mutations, privileges, depth and row limits, bearer tokens, introspection."""
import json
import time
import urllib.request

import pytest

from .background import Probe


@pytest.fixture
def gql_proxy(start_proxy, direct, tmp_path):
    direct.cursor().execute(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; "
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gq_reader') THEN "
        "CREATE ROLE gq_reader; END IF; END $$; "
        "DROP TABLE IF EXISTS gq_books, gq_authors, gq_secret; "
        "CREATE TABLE gq_authors (id int PRIMARY KEY, name text, big bigint, meta jsonb, active boolean); "
        "CREATE TABLE gq_books (id int PRIMARY KEY, author_id int REFERENCES gq_authors (id), title text, "
        "price numeric); CREATE TABLE gq_secret (x int); "
        "INSERT INTO gq_authors SELECT g, 'author ' || g, 9007199254740993, '{\"k\": 1}', g % 2 = 0 "
        "FROM generate_series(1, 20) g; "
        "INSERT INTO gq_books SELECT g, (g - 1) / 3 + 1, 'book ' || g, 10.10 FROM generate_series(1, 60) g; "
        "GRANT SELECT ON gq_authors, gq_books TO gq_reader; GRANT INSERT, UPDATE ON gq_books TO gq_reader")
    proxy = start_proxy(pool={"mode": "transaction"},
                        graphql={"enabled": True, "anonymous_role": "gq_reader", "max_depth": 5, "max_rows": 100})
    proxy.gql = lambda q, **kw: post(proxy, q, **kw)
    return proxy


def post(proxy, query, variables=None, headers=None):
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{proxy.admin_port}/graphql", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def statements(direct):
    cur = direct.cursor()
    cur.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query ILIKE '%gq_%' "
                "AND query NOT ILIKE '%pg_stat_statements%' AND query NOT ILIKE '%pg_catalog.pg_class%' "
                "AND query NOT ILIKE 'SET %'")
    return cur.fetchone()[0]


def test_a_nested_query_is_one_statement_per_level(gql_proxy, direct):
    gql_proxy.gql("{ gq_authors(limit: 1) { id } }")  # (the schema is read once)
    before = statements(direct)
    status, out = gql_proxy.gql("{ gq_authors(order_by: [{id: asc}]) { id name big meta active "
                                "gq_books(order_by: [{id: desc}], limit: 2) { title price author { name } } } }")
    used = statements(direct) - before
    assert status == 200 and "errors" not in out, out
    authors = out["data"]["gq_authors"]
    assert len(authors) == 20 and authors[0]["big"] == "9007199254740993" and authors[0]["meta"] == {"k": 1}
    assert [a["active"] for a in authors[:2]] == [False, True]
    assert [b["title"] for b in authors[0]["gq_books"]] == ["book 3", "book 2"]
    assert authors[6]["gq_books"][0] == {"title": "book 21", "price": "10.10", "author": {"name": "author 7"}}
    assert used == 3  # authors, their books, the books' authors


def test_filters_mutations_and_refusals(gql_proxy, direct):
    status, out = gql_proxy.gql('{ gq_books(where: {_or: [{id: {_eq: 4}}, {title: {_like: "book 5%"}}], '
                                'id: {_lt: 55}}, order_by: [{id: asc}]) { id author { id } } }')
    assert [b["id"] for b in out["data"]["gq_books"]] == [4, 5, 50, 51, 52, 53, 54]
    status, out = gql_proxy.gql('mutation { insert_gq_books(objects: [{id: 1000, author_id: 1, title: "new"}]) '
                                '{ affected_rows returning { id title author { name } } } }')
    assert out["data"]["insert_gq_books"] == {"affected_rows": 1, "returning": [
        {"id": 1000, "title": "new", "author": {"name": "author 1"}}]}
    status, out = gql_proxy.gql('mutation { update_gq_books(where: {id: {_eq: 1000}}, _set: {title: "newer"}) '
                                '{ affected_rows } }')
    assert out["data"]["update_gq_books"]["affected_rows"] == 1
    cur = direct.cursor()
    cur.execute("SELECT title FROM gq_books WHERE id = 1000")
    assert cur.fetchone() == ("newer",)
    status, out = gql_proxy.gql('mutation { insert_gq_books(objects: [{id: 1000, title: "dup"}]) { affected_rows } }')
    assert out["errors"][0]["extensions"]["sqlstate"] == "23505" and out["data"] == {"insert_gq_books": None}
    status, out = gql_proxy.gql("{ gq_secret { x } }")  # (no privilege: not in its schema)
    assert out.get("errors") and not out.get("data")
    status, out = gql_proxy.gql("mutation { delete_gq_books(where: {}) { affected_rows } }")
    assert out.get("errors") and not out.get("data")  # (no DELETE privilege: no delete field)
    status, out = gql_proxy.gql("{ gq_books { author { gq_books { author { gq_books { author { name } } } } } } }")
    assert status == 400 and "max_depth" in out["errors"][0]["message"] and "data" not in out
    status, out = gql_proxy.gql("{ gq_books(limit: 5000) { id } }")
    assert len(out["data"]["gq_books"]) == 61 and gql_proxy.gql("{ gq_books(limit: -1) { id } }")[1]["errors"]
    status, out = gql_proxy.gql("{ gq_authors { id }", headers={"Authorization": "Bearer nonsense"})
    assert status == 401  # (who asks comes first: a stranger's text is not even parsed)
    status, out = gql_proxy.gql("{ gq_authors { id }")
    assert status == 400 and "Syntax Error" in out["errors"][0]["message"]
    status, out = gql_proxy.gql("{ gq_authors { id } }", headers={"Authorization": "Bearer nonsense"})
    assert status == 401 and out["errors"][0]["message"] == "invalid bearer token"


def test_introspection_and_the_schema_following_ddl(gql_proxy, direct):
    from graphql import build_client_schema, get_introspection_query
    status, out = gql_proxy.gql(get_introspection_query())
    schema = build_client_schema(out["data"])
    assert "gq_authors" in schema.query_type.fields and "insert_gq_books" in schema.mutation_type.fields
    assert "author" in schema.get_type("gq_books").fields and "gq_books" in schema.get_type("gq_authors").fields
    conn = gql_proxy.connect()
    conn.autocommit = True
    conn.cursor().execute("ALTER TABLE gq_books ADD COLUMN pages int")  # (DDL through the proxy)
    conn.close()
    direct.cursor().execute("ALTER TABLE gq_authors ADD COLUMN born int")  # (DDL behind its back)
    assert gql_proxy.api("POST", "/graphql/refresh") == (200, {"refreshed": True})
    assert "errors" not in gql_proxy.gql("{ gq_authors(limit: 1) { born } }")[1]
    deadline = time.monotonic() + 10
    while "errors" in gql_proxy.gql("{ gq_books(limit: 1) { pages } }")[1]:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_an_introspection_bomb_is_refused_before_it_runs_and_stalls_no_client(gql_proxy):
    from graphql import get_introspection_query
    status, out = gql_proxy.gql(get_introspection_query())  # what GraphQL clients ask: answered
    assert status == 200 and out["data"]["__schema"]["queryType"]["name"] == "query_root"
    with Probe(gql_proxy.connect, pause=0.02) as probe:  # a client of the proxy beside the bombs
        for aliases in (30, 800, 2000):
            bomb = "{ " + " ".join(f"a{i}: __schema {{ types {{ name fields {{ name args {{ name type {{ name "
                                   f"ofType {{ name }} }} }} }} }} }}" for i in range(aliases)) + " }"
            status, out = gql_proxy.gql(bomb)
            assert status == 400 and not out.get("data"), (aliases, out)
            assert "graphql.max_cost" in out["errors"][0]["message"] or "max_tokens" in out["errors"][0]["message"]
        wide = "{ " + " ".join(f"a{i}: gq_authors {{ id }}" for i in range(2500)) + " }"  # aliases of data
        status, out = gql_proxy.gql(wide)
        assert status == 400 and not out.get("data")
    assert not probe.errors and max(probe.times) < 1.0, (probe.errors[:3], probe.times)  # (2 shared cores: generous; the old proxy stalled 1.6-8.8 s)


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Token abc", "bearer"])
def test_a_malformed_authorization_header_gets_401_not_the_anonymous_role(gql_proxy, header):
    status, out = gql_proxy.gql("{ gq_authors(limit: 1) { id } }", headers={"Authorization": header})
    assert status == 401 and "Authorization" in out["errors"][0]["message"] and not out.get("data")


def test_a_role_that_may_read_no_table_gets_graphql_errors(start_proxy, direct):
    cur = direct.cursor()
    cur.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gq_nobody') THEN "
                "CREATE ROLE gq_nobody; END IF; END $$")
    cur.execute("SELECT 1 FROM pg_database WHERE datname = 'gq_empty'")
    if not cur.fetchone():
        cur.execute("CREATE DATABASE gq_empty")  # (no table at all: nothing other tests grant)
    proxy = start_proxy(graphql={"enabled": True, "anonymous_role": "gq_nobody", "database": "gq_empty"})
    status, out = post(proxy, "{ gq_authors { id } }")
    assert status == 200 and out.get("errors") and not out.get("data"), out
    status, out = post(proxy, "{ _no_tables }")
    assert status == 200 and out["data"] == {"_no_tables": True}


def test_an_answer_larger_than_max_response_bytes_is_refused(start_proxy, direct):
    direct.cursor().execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gq_reader') THEN "
        "CREATE ROLE gq_reader; END IF; END $$; DROP TABLE IF EXISTS gq_big; "
        "CREATE TABLE gq_big AS SELECT g AS id, repeat('x', 1000) AS body FROM generate_series(1, 200) g; "
        "GRANT SELECT ON gq_big TO gq_reader")
    proxy = start_proxy(graphql={"enabled": True, "anonymous_role": "gq_reader", "max_response_bytes": 50000})
    status, out = post(proxy, "{ gq_big(limit: 10) { id body } }")
    assert status == 200 and len(out["data"]["gq_big"]) == 10
    status, out = post(proxy, "{ gq_big(limit: 200) { id body } }")
    assert status == 413 and "graphql.max_response_bytes" in out["errors"][0]["message"] and not out.get("data")
