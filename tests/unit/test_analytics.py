"""Analytics without a server: shapes, intents, quantile accuracy, bounded memory, N+1 runs."""
import math
import random
import time
import types

import pytest

from helios_proxy.analytics import Analytics, SessionState, Stat
from helios_proxy.analytics.intent import intent
from helios_proxy.analytics.sketch import Sketch
from helios_proxy.rewrite.rules import canonical, qualify


def analytics(**cfg):
    settings = dict(max_fingerprints=5000, slow_query_ms=0, slow_log="", slow_log_max_bytes=1 << 20,
                    slow_log_files=1, log_parameters=False, n_plus_one_threshold=3, n_plus_one_window_ms=50,
                    prometheus_top=20)
    settings.update(cfg)
    return Analytics(types.SimpleNamespace(analytics=types.SimpleNamespace(**settings)))


def test_one_shape_for_literals_parameters_spacing_and_case():
    a = analytics()
    texts = ["select v from t where k = 1", "SELECT v FROM t WHERE k = 42", "select v\n from t where k=$1"]
    assert len({id(a.stat(t)) for t in texts}) == 1
    assert a.stat(texts[0]).query == "select v from t where k = $1"
    assert a.stat("select v from t where k = 'secret'").query == "select v from t where k = $1"
    assert a.stat("select from where") is not a.stat("select v from t where k = 1")  # (no parse: its own)


@pytest.mark.parametrize("sql, kind", [
    ("select 1", "read"), ("with x as (delete from t returning *) select * from x", "write"),
    ("select * from t for update", "write"), ("copy t to stdout", "read"), ("copy t from stdin", "write"),
    ("create index on t (a)", "ddl"), ("grant select on t to u", "ddl"), ("truncate t", "write"),
    ("begin", "transaction"), ("set search_path = x", "utility"), ("vacuum t", "utility"),
    ("explain analyze delete from t", "write"), ("begin; update t set a = 1; commit", "write")])
def test_intents_follow_log_statement(sql, kind):
    assert intent(sql) == kind


def test_quantiles_are_within_two_percent_of_the_exact_ones():
    rng, sketch = random.Random(7), Sketch()
    values = sorted(rng.lognormvariate(-6, 1.5) for _ in range(20000))
    for v in values:
        sketch.add(v)
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * (len(values) - 1))]
        assert abs(sketch.quantile(q) - exact) / exact < 0.02
    assert len(sketch.buckets) < 600


def answers(a, *answers, session=None):
    """Answers as the response path notes them, (text, seconds, command tag, SQLSTATE), added up."""
    session = session or types.SimpleNamespace(analytics_state=None, identity=types.SimpleNamespace(
        id=1, user="u", database="db"))
    pending = []
    for sql, took, tag, error in answers:
        ctx = types.SimpleNamespace(sql=sql, large=False, skeleton=None, started=100.0 - took, analyze=True,
                                    protocol="simple")
        pending.append((session, ctx, tag, error, "primary", b"I", 100.0))
    a._add_up(pending)


def test_memory_is_bounded_and_the_least_called_fold_into_other():
    a = analytics(max_fingerprints=20)
    answers(a, *[("select busy from t", 0.01, b"SELECT 1\0", None)] * 2)
    busy = a.stat("select busy from t")
    for i in range(60):
        answers(a, (f"select c{i} from t", 0.001, None, "42P01"))
    assert len(a.stats) <= 20 and busy.fingerprint in a.stats
    assert a.other.calls + sum(s.calls for s in a.stats.values()) == 62
    assert a.other.errors["42P01"] == a.other.calls


def test_a_stat_survives_its_raw_form_exactly():
    a = analytics()
    answers(a, *[("select $1", took, b"SELECT 2\0", None) for took in (0.001, 0.002, 0.5)])
    stat = a.stat("select $1")
    again = Stat.load(stat.raw())
    again.fold(Stat.load(stat.raw()))
    view = again.view()
    assert view["calls"] == 6 and view["rows"] == 12 and view["max_ms"] == 500.0 and view["min_ms"] == 1.0
    assert view["p99_ms"] == pytest.approx(500, rel=0.011)
    assert view["nodes"] == {"primary": 6} and view["databases"] == {"db": 6} and view["users"] == {"u": 6}


def test_n_plus_one_runs_in_a_transaction_and_within_the_window():
    a = analytics()
    session = types.SimpleNamespace(analytics_state=None, identity=types.SimpleNamespace(id=1, user="u", database="db"))
    state = SessionState()
    parent, child = a.stat("select id from p"), a.stat("select * from c where p = 1")
    a.n_plus_one.track(session, state, parent, b"T", 0.0)
    for i in range(3):
        a.n_plus_one.track(session, state, child, b"T", 10.0 + i)  # far apart, but in one transaction
    [pattern] = a.n_plus_one.view()
    assert pattern["preceding_query"] == "select id from p" and pattern["count"] == 3
    assert pattern["suggestion"].startswith("select * from c where p = ANY($1)")
    state.run = None
    for i in range(3):
        a.n_plus_one.track(session, state, child, b"I", 100.0 + i)  # autocommit, 1 s apart: no run
    assert a.n_plus_one.view()[0]["occurrences"] == 1


def test_normalize_and_schema_prefix():
    assert canonical("select  a,\n b -- why\n from t /*+ route=standby */ where x>=1") == \
        "select a, b from t /*+ route=standby */ where x>=1"
    assert qualify("/*+ node=s1 */ with c as (select 1) select * from c, t", "app") == \
        "/*+ node=s1 */ WITH c AS (SELECT 1) SELECT * FROM c, app.t"
    assert qualify("select * from other.t", "app") == "select * from other.t"


def test_with_the_query_cache_on_a_read_shape_has_its_distribcache_class():
    from helios_proxy.cache.shape import Shapes
    a = analytics()
    a.cache = types.SimpleNamespace(shapes=Shapes())
    assert [a.stat(q).cache_class for q in ("select v from t where k = 1", "select count(*) from t group by a",
                                            "select * from t where k > 5", "update t set a = 1")] == \
        ["point", "analytic", "range", None]
    assert analytics().stat("select v from t where k = 1").cache_class is None  # (cache off: no class)


def test_the_fast_key_never_joins_texts_whose_digits_are_part_of_a_name():
    from helios_proxy.sqlshape import fast_key, fast_key_sound
    assert fast_key("select a from t where b = 12 and c = 3") == b"select a from t where b = 00 and c = 0"
    for text in ("select * from t1", 'select "c2" from t', "select $1", "select 'a1'", "select é1, 1"):
        assert not fast_key_sound(fast_key(text)), text
    assert fast_key_sound(fast_key("select é, 'x 1', 2.5"))
    a = analytics()
    for one, two in (("select * from t1", "select * from t2"), ("select a1 from t", "select a2 from t"),
                     ('select "c1" from t', 'select "c2" from t'), ("select é1 from t", "select é2 from t")):
        assert a.stat(one) is not a.stat(two) and a.stat(two) is not a.stat(one), (one, two)
    assert a.stat("select * from t where a = 5") is a.stat("select * from t where a = 7")
    assert a.stat("select * from t1 where a = 5") is not a.stat("select * from t2 where a = 5")
    assert a.stat("select x from t limit 10") is a.stat("select x from t limit 99")


def test_a_batch_of_durations_falls_in_the_buckets_one_by_one_would():
    values = [0.0, 1e-9, 1e-6, 0.000731, 0.25, 0.999999, 1.0, 1.5, 86400.0] + [random.random() for _ in range(500)]
    one_by_one, batch = Sketch(), Sketch()
    for v in values:
        one_by_one.buckets[math.ceil(math.log(max(v, 1e-6)) / math.log(1.02))] = \
            one_by_one.buckets.get(math.ceil(math.log(max(v, 1e-6)) / math.log(1.02)), 0) + 1
    batch.add_all(values)
    assert batch.buckets == one_by_one.buckets and batch.count == len(values)


def test_answers_noted_count_as_soon_as_anything_reads_the_numbers():
    a = analytics()
    session = types.SimpleNamespace(analytics_state=None, identity=types.SimpleNamespace(id=1, user="u", database="db"))
    ctx = types.SimpleNamespace(sql="select 1", large=False, skeleton=None, started=time.monotonic(),
                                analyze=True, protocol="simple")
    a.record(session, ctx, b"SELECT 1\0", None, "proxy", b"I")
    assert a.pending  # (noted, not added up yet) ...
    [row] = a.queries()  # ... until something reads
    assert row["calls"] == 1 and row["rows"] == 1 and row["nodes"] == {"proxy": 1} and not a.pending
