"""Routing hints in a leading SQL comment: /*+ route=primary */, /*+ route=standby */, /*+ node=NAME */.

An unknown hint or value is an error (SQLSTATE 22023), never silently ignored.
"""
import re

from ..errors import ProxyError

INVALID_PARAMETER_VALUE = "22023"
HINT = re.compile(r"^\s*/\*\+(.*?)\*/", re.S)
ROUTES = ("primary", "standby", "any")


def parse_hints(sql, nodes):
    """{'route': ..., 'node': ...} from a leading /*+ ... */ comment; {} when there is none."""
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
            if value not in nodes:
                raise ProxyError(f"unknown node {value!r} in hint", sqlstate=INVALID_PARAMETER_VALUE)
        else:
            raise ProxyError(f"unknown routing hint {key!r}: use route= or node=",
                             sqlstate=INVALID_PARAMETER_VALUE)
        hints[key] = value
    return hints
