"""The per-query pipeline: a QueryContext passes through the ordered, enabled stages.

(The query size limit, `pipeline.max_query_bytes`, is checked by the forwarder on the message
length before any stage: a text too large is refused without being decoded.)

STAGES below is the whole pipeline in order (the spec's data-flow diagram); a stage whose feature
is off is left out of the built tuple, so it costs nothing per query. With no stage enabled the
session does not even build a QueryContext.
"""
from .context import QueryContext  # noqa: F401
from .stage import Action, Stage, StageResult  # noqa: F401
from .stages.analytics import Analytics
from .stages.batch import Batch
from .stages.cache import Cache
from .stages.journal import Journal
from .stages.plugins import Plugins
from .stages.pooling_guard import PoolingGuard
from .stages.rate_limit import RateLimit
from .stages.rewrite import Rewrite
from .stages.route import Route
from .stages.schema_routing import SchemaRouting
from .stages.tenant import Tenant
from .stages.sql_prepare import SqlPreparedStatements

# In the spec's order: auth proxy, tenant, rate limit, circuit breaker, plugins, rewriter,
# analytics, routing hints, cache, schema router, lag router, load balancer. Later issues add theirs.
STAGES = (
    Tenant,         # [tenancy]: the tenant's queries counted, its qps, nothing that leaves its isolation
    RateLimit,      # [[limits]]: token buckets, sliding windows, concurrency guards -> 53400
    Plugins,        # plugins' on_query_start (Python packages and WASM modules), when any implements it
    Rewrite,        # [[rewrite]] rules: regular expressions, fingerprints, schema prefixes, hints
    Analytics,      # [analytics]: the query's fingerprint and start (its end: frontend/relay.py)
    PoolingGuard,   # transaction/statement pooling only: settings, pinning, statement-mode refusals
    SqlPreparedStatements,  # transaction/statement pooling only: PREPARE/EXECUTE/DEALLOCATE
    Route,          # read/write splitting: hints, SET helios.route, classification -> next lease
    Cache,          # the query cache: a hit answered here, a miss filled on its way back, writes invalidate
    SchemaRouting,  # [[routing.tables]]: table rules and data temperature refine where a read goes
    Batch,          # [batch]: single-row autocommit INSERTs of many clients coalesced into one (batch/)
    Journal,        # transaction replay on: COMMITs (xid first) and session state changes, for the journal
)


CONTINUE = StageResult.CONTINUE


def build(config, plugins=None):
    """Instantiate the stages the configuration (and the loaded plugins) enable, in pipeline order."""
    built = []
    for stage in STAGES:
        if getattr(stage, "uses_plugins", False):
            if stage.enabled(config, plugins):
                built.append(stage(config, plugins))
        elif stage.enabled(config):
            built.append(stage(config))
    return tuple(built)


def run(stages, ctx):
    """Pass ctx through stages until one does not CONTINUE; return the deciding result."""
    for stage in stages:
        result = stage.process(ctx)
        if result is not CONTINUE and result.action is not Action.CONTINUE:
            if result.action is Action.REWRITE:
                ctx.sql = result.sql
                continue
            return result
    return StageResult.CONTINUE
