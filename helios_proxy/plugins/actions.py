"""What `on_query_start` may return (None means: go on), and what `on_query_complete` is told."""
from dataclasses import dataclass
from typing import Optional

from ..pipeline.stage import StageResult
from ..protocol import codec


def reject(sqlstate, message):
    """Answer the query with an ErrorResponse; the server never sees it."""
    if not (isinstance(sqlstate, str) and len(sqlstate) == 5 and sqlstate.isalnum()):
        raise ValueError(f"a SQLSTATE is five letters or digits, not {sqlstate!r}")
    return StageResult.reject(sqlstate.upper(), str(message))


def rewrite(sql):
    """Send this SQL instead."""
    return StageResult.rewrite(str(sql))


def respond(columns, rows, tag=None):
    """Answer from the proxy with a text result (either protocol: frontend/forward_local.py)."""
    return StageResult.respond(codec.table_result(list(columns), [list(r) for r in rows],
                                                  tag or f"SELECT {len(rows)}"))


@dataclass
class Outcome:
    seconds: float
    command_tag: Optional[str] = None
    rows: Optional[int] = None
    error: Optional[str] = None
    node: Optional[str] = None
