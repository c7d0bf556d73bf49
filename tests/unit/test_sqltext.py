"""The cheap SQL screens never say no where the regular expression they stand for says yes."""
import itertools

from helios_proxy.pipeline.sqltext import Leading, leading, mentions

WORDS = ("set", "begin", "execute")
PREFIXES = ("", " ", "\n\t ", "/* c */ ", "-- c\n", "(", "SELECT 1; ", "SELECT ';'; ", "x")
STATEMENTS = ("SET x = 1", "set x to 1", "Begin", "BEGIN;", "begin ;", "EXECUTE p(1)", "SELECT 1",
              "UPDATE t SET a = 1 WHERE b = 2;", "SETTINGS", "set_config('a', 'b', false)", "sEt x=1;;",
              "SELECT abalance FROM pgbench_accounts WHERE aid = 5;", "", ";", "ReSeT all", "execute\np")


def test_leading_agrees_with_its_regular_expression():
    fast, regex = Leading(*WORDS), leading(*WORDS)
    for prefix, statement, suffix in itertools.product(PREFIXES, STATEMENTS, ("", " ", ";", "; SET a=1")):
        sql = prefix + statement + suffix
        assert fast.search(sql) == (regex.search(sql) is not None), sql


def test_mentions_is_case_insensitive():
    assert mentions("CREATE TEMP TABLE t ()", ("temp",))
    assert not mentions("SELECT 1", ("temp", "advisory_lock"))


def test_the_context_screens_the_text_a_stage_rewrote():
    from helios_proxy.pipeline.context import QueryContext
    ctx = QueryContext(None, "SELECT 1")
    assert ctx.word == "select" and ctx.lower == "select 1" and ctx.tags == {}
    ctx.sql = "/* x */ SET a = 1"
    assert ctx.word is None and ctx.lower == "/* x */ set a = 1"
