"""The query cache's parts without a server: shapes and keys, the extended-protocol batch, the hot
tier's bounds and index, the catalog's dependencies, the Redis value format."""
from helios_proxy.cache import extended, workload_class
from helios_proxy.cache.catalog import Catalog
from helios_proxy.cache.shape import INT4, UNKNOWN_TYPE, Shapes, analyze
from helios_proxy.cache.store import READY_IDLE, Entry, HotTier
from helios_proxy.cache.warm import decode, encode
from helios_proxy.protocol import codec


def test_spellings_share_a_template_and_what_changes_the_answer_does_not():
    a = analyze("select v from kv where k = 12")
    b = analyze("SELECT v  FROM kv\n WHERE k=12 -- again")
    c = analyze("select /* c */ v from kv where k = $1")
    assert a.template == b.template == c.template
    assert a.values == b.values == ((INT4, "12"),) and c.values == (("$", 1),)
    assert analyze("select 1 as a").template != analyze("select 1 as b").template  # (pglast's fingerprint: equal)
    assert analyze("select '1'").values != analyze("select 1").values
    assert analyze("select v from kv where k = -12").values == ((INT4, "-12"),)
    assert analyze("select * from t order by a").template != analyze("select * from t order by a desc").template
    assert analyze("select '1'").values == ((UNKNOWN_TYPE, "1"),)
    in_a, in_b = analyze("select v from kv where k in (3, 1, 2)"), analyze("select v from kv where k in (1,2,3)")
    assert in_a.template == in_b.template and in_a.values == in_b.values
    assert analyze("select v from kv where k in (1, 2)").values != in_b.values
    assert analyze("select v from kv where k in (1, 2, 4)").values != in_b.values
    assert analyze("select v from kv where k in (1, 2.5, true)").why_not is None  # (kinds mixed)


def test_what_a_statement_reads_writes_and_why_it_is_not_cached():
    s = analyze("with x as (select * from a) select * from x join b on true")
    assert s.why_not is None and {n for _, n in s.reads} == {"a", "b"}  # (x is a CTE)
    assert analyze("update t set a = 1").writes == ("t",)
    assert analyze("truncate a, b").writes == ("a", "b")
    assert analyze("with d as (delete from t returning *) select * from d").writes == ("t",)
    assert analyze("copy t from stdin").writes == ("t",)
    assert analyze("create table z (a int)").everything
    assert analyze("select * into z from t").everything
    assert analyze("select * from t for update").why_not == "FOR UPDATE/SHARE"
    assert analyze("select 1; select 2").why_not == "not a single statement"
    assert analyze("create temp table t (a int)").creates_temp
    assert analyze("set search_path = x").sets and analyze("select set_config('a', 'b', false)").sets
    assert analyze("select current_timestamp").stable
    assert analyze("not sql at all").why_not == "does not parse"


def test_workload_classes():
    assert workload_class(analyze("select v from kv where k = 1")) == "point"
    assert workload_class(analyze("select v from kv where k > 1")) == "range"
    assert workload_class(analyze("select count(*) from kv group by v")) == "analytic"
    assert workload_class(analyze("select id from items order by embedding <-> '[1,2]' limit 5")) == "vector"


def batch_bytes(params=("12",), describe=True, rows=0):
    out = codec.bind(list(params))
    if describe:
        out += codec.describe_portal()
    return out + codec.execute(max_rows=rows) + codec.SYNC


def test_a_plain_extended_batch_is_recognized_and_its_parameters_read():
    data = bytearray(codec.parse("select v from kv where k = $1", param_types=(23,)) + batch_bytes())
    name, sql, types = extended.parse_types(data, 0, data.index(b"B"))
    assert name == "" and sql == "select v from kv where k = $1" and types == (23,)
    at = data.index(b"B")
    bind_begin, bind_end, describe, end = extended.batch(data, at)
    assert describe and end == len(data)
    statement, params, results = extended.bind_values(data, bind_begin, bind_end)
    assert statement == "" and params == [(0, b"12")] and results is None
    shape = analyze("select v from kv where k = $1")
    assert extended.values(shape.values, params, types) == analyze("select v from kv where k = 12").values
    assert extended.values(shape.values, params, ()) == ((UNKNOWN_TYPE, "12"),)  # an untyped '12'
    assert extended.values(shape.values, [], types) is None
    assert extended.batch(bytearray(batch_bytes(rows=10)), 0) is None  # a row limit: not a plain batch
    assert extended.batch(bytearray(batch_bytes()[:-3]), 0) is None  # not all here yet


def entry(key, size=100, names=("t",), db="d", expires=1e18):
    return Entry(key, b"T" + b"x" * 10, b"D" * size, expires, frozenset(names), db, "point", 0)


def test_the_hot_tier_is_bounded_by_bytes_least_recently_used_first():
    hot = HotTier(1000)
    for k in range(3):
        hot.put(entry(k))
    assert hot.get(0, 0) is not None  # 0 is now the most recently used
    hot.put(entry(3))  # over 1000 bytes: the least recently used (1) goes
    assert hot.get(1, 0) is None and hot.get(0, 0) is not None and hot.bytes <= 1000
    hot.put(entry(9, size=5000))  # larger than the whole tier: not kept
    assert hot.get(9, 0) is None


def test_the_hot_tier_drops_by_table_database_and_age():
    hot = HotTier(1 << 20)
    hot.put(entry("a", names=("t",)))
    hot.put(entry("b", names=("u",)))
    hot.put(entry("c", names=("t",), db="other"))
    hot.put(entry("old", names=("x",), expires=5))
    assert hot.invalidate("d", {"t"}) == 1 and hot.get("a", 0) is None and hot.get("b", 0) is not None
    assert hot.get("c", 0) is not None  # another database's table t
    assert hot.get("old", 10) is None
    assert hot.invalidate("d") == 1 and len(hot) == 1 and not hot.index.get(("d", "u"))


def test_an_entry_gives_each_protocol_its_parts():
    e = Entry("k", b"T-desc", b"D-rowsC-done", 1, frozenset(), "d", "point", 0)
    assert e.wire == b"T-descD-rowsC-done" + READY_IDLE
    assert e.rowdesc == b"T-desc" and e.body == b"D-rowsC-done"
    e = Entry("k", None, b"D-rows", 1, frozenset(), "d", "point", 0)
    assert e.rowdesc is None and e.body == b"D-rows"


def test_the_catalog_resolves_views_and_partition_families():
    rows = [("orders", "p", "{}", "{}"), ("orders_2024", "r", "{orders}", "{}"), ("customers", "r", "{}", "{}"),
            ("big", "v", "{}", "{orders,customers}"), ("summary", "v", "{}", "{big}"), ("remote", "f", "{}", "{}")]
    cat = Catalog(rows, [("now", "s"), ("lower", "i")])
    assert cat.deps([(None, "orders_2024")]) == {"orders", "orders_2024"}
    assert cat.deps([(None, "summary")]) == {"summary", "big", "orders", "orders_2024", "customers"}
    assert cat.why_not([(None, "orders")]) is None
    assert cat.why_not([(None, "remote")]) == "foreign table"
    assert cat.why_not([("pg_catalog", "pg_class")]) == "system catalog"
    assert cat.why_not([(None, "nowhere")]).startswith("unknown relation")
    assert cat.volatility == {"now": "s", "lower": "i"}


def test_redis_values_round_trip_compressed_or_not():
    for body in (b"D" * 10, b"D" * 10000):
        value = encode(b"T-desc", body, [1, 2, 3], {"ttl": 60})
        assert decode(value) == (b"T-desc", body, [1, 2, 3], {"ttl": 60})
        assert (len(value) < len(body)) == (len(body) > 1024)
    assert decode(encode(None, b"D", [0], {}))[0] is None


def test_texts_that_differ_only_in_literals_share_a_parse_and_keep_their_own_constants():
    shapes = Shapes()
    texts = ["select v from kv where k = 12", "select v from kv where k = 13", "select v from kv where k = '13'",
             "select v from kv where k = -5", "select v from kv where k = -6", "select v from kv where k in (3, 1)",
             "select v from kv where k in (1, 3)", "select 3000000000", "select 2", "select 1.50",
             "select 'it''s'", "select 'x'", "update kv set v = 'a' where k = 1", "update kv set v = 'b' where k = 2"]
    for text in texts * 2:
        shape, values = shapes.get(text)
        alone = analyze(text)
        assert shape.template == alone.template and shape.writes == alone.writes, text
        if alone.why_not is None:
            assert values == alone.values, text
    assert len(shapes.cache) < len(texts)  # (shared: not every text was parsed and kept)


def test_a_shape_whose_answers_are_not_asked_again_skips_the_cache_but_for_probes():
    from helios_proxy.cache import ONE_HIT_CALLS, ONE_HIT_PROBE, ClassStats
    stats = ClassStats("fp", "point")
    stats.calls, stats.hits = ONE_HIT_CALLS, 0
    skips = [stats.skip_now() for _ in range(ONE_HIT_PROBE * 2)]
    assert skips.count(False) == 2  # one read in ONE_HIT_PROBE still goes through
    stats.hits = ONE_HIT_CALLS // 10  # hits again: every read goes through
    assert not any(stats.skip_now() for _ in range(10))
