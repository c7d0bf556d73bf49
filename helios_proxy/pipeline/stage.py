"""The Stage interface and the StageResult a stage returns: continue, reject, rewrite or respond."""
import enum
from dataclasses import dataclass


class Action(enum.Enum):
    CONTINUE = "continue"
    REJECT = "reject"      # answer with an ErrorResponse (sqlstate, message)
    REWRITE = "rewrite"    # replace the SQL text and go on
    RESPOND = "respond"    # answer from the proxy with ready-made backend messages


@dataclass(frozen=True)
class StageResult:
    action: Action
    sqlstate: str = None
    message: str = None
    sql: str = None
    payload: bytes = None  # RESPOND: complete backend messages, without ReadyForQuery

    @classmethod
    def reject(cls, sqlstate, message):
        return cls(Action.REJECT, sqlstate=sqlstate, message=message)

    @classmethod
    def rewrite(cls, sql):
        return cls(Action.REWRITE, sql=sql)

    @classmethod
    def respond(cls, payload):
        return cls(Action.RESPOND, payload=payload)


StageResult.CONTINUE = StageResult(Action.CONTINUE)


class Stage:
    """One step of the pipeline. Subclasses set `name` and implement `process`, and say whether
    they leave a cacheable read alone (`leaves_reads_alone`: the query cache may then answer a read
    it admitted before, ahead of the pipeline: cache/ QueryCache.quick_allowed)."""

    name = "stage"
    leaves_reads_alone = False
    # Its process() never waits and may run more than once per session at any moment: the fast path
    # (frontend/fastpath.py) may run it in a loop callback. A stage that may wait (I/O, a queue), or
    # whose side effects must happen in the session's greenlet, leaves it False: while it is built,
    # no query takes the fast path.
    callback_safe = False
    # For a pooled session, whether it lets a text through (CONTINUE, no decision) depends only on
    # the text's words and structure, never on a number's value or on anything it counts: the fast
    # path may remember such a text and skip it for the text's twins (sqlshape.fast_key).
    text_only = False
    # Its one effect on a query is where the session's next lease goes (the route stage): a query
    # that takes no lease, an INSERT its batch answers (frontend/fastpath.py), may skip it.
    aims_lease = False
    # fast_ready(session) -> bool, on a stage that is callback_safe only once something is ready
    # (the route stage: its database's function catalog): asked by the fast path before each query.
    fast_ready = None

    def __init__(self, config):
        self.config = config

    @classmethod
    def enabled(cls, config):
        """Whether the configuration turns this stage on; off stages are not built."""
        return True

    def process(self, ctx):
        """Inspect or change ctx; return a StageResult."""
        raise NotImplementedError
