"""The compiled helper (helios_proxy/_speedups.c) against its pure-Python reference (speedups.py):
the same answers (and the same refusals) on the same inputs, from real answers and requests to
random bytes. The whole suite runs with whichever of the two the environment chooses
(HELIOS_PURE_PYTHON=1: the reference; .ci/run runs its second pass so)."""
import os
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from helios_proxy import speedups
from helios_proxy.frontend.relay import STOPS
from helios_proxy.frontend.plan import PLAIN, QUERY, SYNC
from helios_proxy.sqlshape import DIGITS_TO_0

try:
    from helios_proxy import _speedups
except ImportError:  # (built where a C compiler was found: .ci/run checks that it was)
    _speedups = None

needs_c = pytest.mark.skipif(_speedups is None, reason="the C helper is not built (no compiler at install)")


def msg(mtype, body=b""):
    return mtype + struct.pack("!I", len(body) + 4) + body


SELECT_ANSWER = (msg(b"T", b"\0\1aid\0" + bytes(18)) + msg(b"D", b"\0\1\0\0\0\x011") + msg(b"C", b"SELECT 1\0")
                 + msg(b"Z", b"I"))
ERROR_ANSWER = msg(b"E", b"SERROR\0C42601\0Mbad\0\0") + msg(b"Z", b"I")
# a DataRow whose value holds what looks like messages: the walk must step over it
TRICKY_ANSWER = msg(b"D", b"\0\1\0\0\0\x0b" + msg(b"E", b"xx")) + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")


def both(name, *args):
    """(the reference's answer, the C one's): a result, or the exception's type."""
    out = []
    for f in (getattr(speedups, "py_" + name), getattr(_speedups, name)):
        try:
            out.append(f(*args))
        except (ValueError, TypeError, OverflowError, IndexError, struct.error) as e:  # (the reference's
            out.append(ValueError if isinstance(e, (IndexError, struct.error)) else type(e))  # as the C one's)
    return out


@needs_c
@pytest.mark.parametrize("answer", [SELECT_ANSWER, ERROR_ANSWER, TRICKY_ANSWER])
@pytest.mark.parametrize("entry", [PLAIN[QUERY], PLAIN[SYNC]])
def test_walk_stops_where_the_reference_stops(answer, entry):
    tail = len(answer) - 6
    for pos in range(0, 6):
        ref, fast = both("walk", answer, pos, tail, STOPS[entry])
        assert ref == fast


IMPLEMENTATIONS = [pytest.param(speedups, id="python"),
                   pytest.param(_speedups, id="c", marks=needs_c)]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_walk_steps_over_a_rows_bytes_and_stops_at_an_error(impl):
    walk = impl.py_walk if impl is speedups else impl.walk
    stops = STOPS[PLAIN[QUERY]]
    assert walk(SELECT_ANSWER, 0, len(SELECT_ANSWER) - 6, stops) == len(SELECT_ANSWER) - 6
    assert walk(TRICKY_ANSWER, 0, len(TRICKY_ANSWER) - 6, stops) == len(TRICKY_ANSWER) - 6
    assert walk(ERROR_ANSWER, 0, len(ERROR_ANSWER) - 6, stops) == 0
    assert walk(SELECT_ANSWER, 0, len(SELECT_ANSWER) - 6, STOPS[PLAIN[SYNC]]) == len(SELECT_ANSWER) - 6


@needs_c
def test_walk_refuses_what_would_read_beyond_the_data_as_the_reference_does():
    stops = STOPS[PLAIN[QUERY]]
    cut = SELECT_ANSWER[:SELECT_ANSWER.index(b"D\0")] + b"D\0\0"  # (a DataRow's header cut short)
    for data, pos, tail in ((cut, 0, len(cut)), (cut, len(cut) - 3, len(cut)),
                            (SELECT_ANSWER, len(SELECT_ANSWER), 99)):
        ref, fast = both("walk", data, pos, tail, stops)
        assert ref is fast is ValueError
    with pytest.raises(TypeError):
        _speedups.walk(bytearray(SELECT_ANSWER), 0, 5, stops)
    with pytest.raises(TypeError):
        _speedups.walk(SELECT_ANSWER, 0, 5, b"\0" * 255)


@needs_c
@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=5, max_size=300), st.integers(0, 40), st.integers(0, 300),
       st.sampled_from([PLAIN[QUERY], PLAIN[SYNC]]))
def test_walk_matches_the_reference_on_any_bytes(data, pos, tail, entry):
    ref, fast = both("walk", data, pos, tail, STOPS[entry])
    assert ref == fast


QUERIES = [msg(b"Q", b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;\0"),
           msg(b"Q", b"\0"),  # (an empty text)
           msg(b"Q", b"select 1\0select 2\0"),  # a NUL inside the text
           msg(b"Q", b"select 1"),  # no final NUL
           msg(b"Q", b"select 1\0")[:-1] + b"\0\0",  # a length that does not match
           b"Q\0\0\0", b"", msg(b"P", b"\0select 1\0\0\0")]


@needs_c
@pytest.mark.parametrize("data", QUERIES)
def test_query_key_is_the_references(data):
    ref, fast = both("query_key", data, DIGITS_TO_0)
    assert ref == fast


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_query_key_is_the_fast_key_of_one_whole_query(impl):
    query_key = impl.py_query_key if impl is speedups else impl.query_key
    assert query_key(QUERIES[0], DIGITS_TO_0) == QUERIES[0].translate(DIGITS_TO_0)
    assert query_key(QUERIES[1], DIGITS_TO_0) == QUERIES[1]
    assert [query_key(q, DIGITS_TO_0) for q in QUERIES[2:]] == [None] * (len(QUERIES) - 2)


@needs_c
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_query_key_matches_the_reference_on_any_bytes(text):
    for data in (msg(b"Q", text), b"Q" + text):
        ref, fast = both("query_key", data, DIGITS_TO_0)
        assert ref == fast


def test_helios_pure_python_chooses_the_reference():
    code = "from helios_proxy import speedups; print(speedups.COMPILED, speedups.walk is speedups.py_walk)"
    env = {k: v for k, v in os.environ.items() if k != "HELIOS_PURE_PYTHON"}
    pure = subprocess.run([sys.executable, "-c", code], env={**env, "HELIOS_PURE_PYTHON": "1"},
                          capture_output=True, text=True, check=True).stdout.split()
    assert pure == ["False", "True"]
    chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            check=True).stdout.split()
    assert chosen == (["True", "False"] if _speedups is not None else ["False", "True"])
