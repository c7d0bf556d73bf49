"""The extended protocol for the cache: a batch Parse/Bind/[Describe]/Execute/Sync (or, for a
statement prepared before, Bind/[Describe]/Execute/Sync) is one lookup, keyed with the Bind's
parameters; a hit answers the whole batch without a server.

Only the plain batch that drivers send for one query qualifies: unnamed portal, Describe of that
portal or none, Execute of all rows, Sync, all already received. Parameters bound as text are
equal to the literal of the same kind (an untyped parameter to a string literal, an int4 one to an
integer literal); a binary parameter has a kind of its own.
"""
from struct import unpack_from

from .shape import UNKNOWN_TYPE

B, D, E, S = ord("B"), ord("D"), ord("E"), ord("S")
PORTAL = ord("P")


def parse_types(data, begin, end):
    """(statement name, query text, parameter type OIDs) of the Parse message in data[begin:end]."""
    body = begin + 5
    nul = data.index(0, body, end)
    name = bytes(data[body:nul]).decode("utf-8", "replace")
    nul2 = data.index(0, nul + 1, end)
    sql = bytes(data[nul + 1:nul2]).decode("utf-8", "replace")
    n = unpack_from("!h", data, nul2 + 1)[0]
    return name, sql, unpack_from(f"!{n}I", data, nul2 + 3) if n > 0 else ()


def _message(data, pos):
    if len(data) - pos < 5:
        return None
    length = unpack_from("!i", data, pos + 1)[0]
    end = pos + 1 + length
    if length < 4 or end > len(data):
        return None
    return data[pos], pos, end


def batch(data, pos):
    """(bind begin, bind end, describe?, end of Sync) when data[pos:] starts with a complete plain
    Bind/[Describe portal]/Execute/Sync of the unnamed portal; else None."""
    msg = _message(data, pos)
    if msg is None or msg[0] != B or data[pos + 5] != 0:  # (the unnamed portal)
        return None
    _, bind_begin, bind_end = msg
    msg = _message(data, bind_end)
    describe = msg is not None and msg[0] == D
    if describe:
        if msg[2] - msg[1] != 7 or data[msg[1] + 5] != PORTAL:  # "D", length, 'P', "" only
            return None
        msg = _message(data, msg[2])
    if msg is None or msg[0] != E or msg[2] - msg[1] != 10 or data[msg[1] + 5] != 0 \
            or unpack_from("!i", data, msg[1] + 6)[0] != 0:  # unnamed portal, all rows
        return None
    msg = _message(data, msg[2])
    if msg is None or msg[0] != S:
        return None
    return bind_begin, bind_end, describe, msg[2]


def bind_values(data, begin, end):
    """(statement name, [(format, value bytes or None)], result formats or None) of a Bind."""
    pos = data.index(0, begin + 5, end) + 1  # after the portal's name
    nul = data.index(0, pos, end)
    statement = bytes(data[pos:nul]).decode("utf-8", "replace")
    pos = nul + 1
    nformats = unpack_from("!h", data, pos)[0]
    formats = unpack_from(f"!{nformats}h", data, pos + 2) if nformats else ()
    pos += 2 + 2 * nformats
    nparams = unpack_from("!h", data, pos)[0]
    pos += 2
    params = []
    for i in range(nparams):
        size = unpack_from("!i", data, pos)[0]
        pos += 4
        fmt = formats[0] if nformats == 1 else (formats[i] if nformats else 0)
        if size < 0:
            params.append((fmt, None))
        else:
            params.append((fmt, bytes(data[pos:pos + size])))
            pos += size
    nresults = unpack_from("!h", data, pos)[0]
    results = unpack_from(f"!{nresults}h", data, pos + 2) if nresults else ()
    return statement, params, (None if not any(results) else tuple(results))


def values(shape_values, params, types):
    """The shape's values with each $n replaced by the n-th parameter's (kind, value); None when
    a $n has no parameter (PostgreSQL will say so)."""
    out = []
    for value in shape_values:
        if value[0] != "$":
            out.append(value)
            continue
        n = value[1]
        if n < 1 or n > len(params):
            return None
        fmt, raw = params[n - 1]
        oid = types[n - 1] if n <= len(types) else UNKNOWN_TYPE
        if raw is None:
            out.append(("null", oid))
        elif fmt == 0:
            out.append((oid, raw.decode("utf-8", "surrogateescape")))
        else:
            out.append(("binary", oid, raw))
    return tuple(out)
