"""QueryContext: what the pipeline knows about one query on its way to a backend."""
from dataclasses import dataclass, field


@dataclass
class QueryContext:
    session: object            # the ClientSession (user, database, client address, ...)
    sql: str                   # the query text (simple Query or Parse)
    protocol: str = "simple"   # "simple" or "extended"
    statement: str = ""        # prepared statement name (extended)
    tags: dict = field(default_factory=dict)  # annotations stages leave for later stages / logs
    started: float = 0.0       # monotonic time the pipeline saw it (plugins stage)
