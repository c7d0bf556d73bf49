"""The fast path's byte walks (issue 33), in C where helios_proxy/_speedups.c was built, else in
Python: the py_ functions here are the reference, the C ones do exactly what they do; `walk` and
`query_key` are the ones that run.

The C module is optional: `pip install -e .` builds it where a C compiler is found and goes on
without it where none is (setup.py). HELIOS_PURE_PYTHON=1 in the environment chooses the Python
functions (as psycopg, msgpack and gevent let their users choose). `COMPILED` says which run.
tests/unit/test_speedups.py runs both on the same inputs.
"""
import os

from .protocol.framing import length_of


def py_walk(data, pos, tail, stops):
    """Where the first message at or after data[pos] whose type stops names (stops[type] != 0: a
    256-byte table) begins, walking the messages by their headers; else where the walk passed tail
    (>= tail). A header it must read beyond data raises (the C one: ValueError)."""
    while pos < tail:
        if stops[data[pos]]:
            return pos
        pos += 1 + length_of(data, pos)[0]
    return pos


def py_query_key(data, table):
    """data.translate(table) if data is one whole simple Query (its length field, its final NUL,
    no NUL inside its text), else None."""
    n = len(data)
    if n < 6 or length_of(data, 0)[0] != n - 1 or data[-1] != 0 or data.find(0, 5, n - 1) >= 0:
        return None
    return data.translate(table)


def table(stop_types):
    """The 256-byte table walk() takes: 1 for each message type in stop_types, else 0."""
    return bytes(1 if t in stop_types else 0 for t in range(256))


walk, query_key, COMPILED = py_walk, py_query_key, False
if not os.environ.get("HELIOS_PURE_PYTHON"):
    try:
        from . import _speedups
    except ImportError:  # (not built: no compiler where it was installed)
        pass
    else:
        walk, query_key, COMPILED = _speedups.walk, _speedups.query_key, True
