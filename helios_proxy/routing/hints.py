"""Hints in a leading SQL comment: /*+ route=primary */, /*+ route=standby */, /*+ node=NAME */ (routing),
/*+ cache=off */ and /*+ cache_ttl=SECONDS */ (the query cache, cache/), several separated by spaces.

An unknown hint or value is an error (SQLSTATE 22023), never silently ignored.
"""
import re

from ..errors import INVALID_PARAMETER_VALUE, ProxyError

HINT = re.compile(r"^\s*/\*\+(.*?)\*/", re.S)
ROUTES = ("primary", "standby", "any")


def parse_hints(sql, nodes):
    """{'route': ..., 'node': ..., 'cache': ...} from a leading /*+ ... */ comment; {} when there is
    none. nodes: the node names a node= hint may name (None: not checked)."""
    match = HINT.match(sql)
    if not match:
        return {}
    hints = {}
    for item in match.group(1).split():
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ProxyError(f"malformed routing hint {item!r}: expected key=value",
                             sqlstate=INVALID_PARAMETER_VALUE)
        if key == "route":
            if value not in ROUTES:
                raise ProxyError(f"unknown route {value!r} in hint: use one of {', '.join(ROUTES)}",
                                 sqlstate=INVALID_PARAMETER_VALUE)
        elif key == "node":
            if nodes is not None and value not in nodes:
                raise ProxyError(f"unknown node {value!r} in hint", sqlstate=INVALID_PARAMETER_VALUE)
        elif key == "cache":
            if value not in ("on", "off"):
                raise ProxyError(f"invalid cache hint {value!r}: use cache=on or cache=off",
                                 sqlstate=INVALID_PARAMETER_VALUE)
        elif key == "cache_ttl":
            if not value.isdigit() or int(value) <= 0:
                raise ProxyError(f"invalid cache_ttl hint {value!r}: a whole number of seconds above 0",
                                 sqlstate=INVALID_PARAMETER_VALUE)
        else:
            raise ProxyError(f"unknown hint {key!r}: use route=, node=, cache= or cache_ttl=",
                             sqlstate=INVALID_PARAMETER_VALUE)
        hints[key] = value
    return hints
