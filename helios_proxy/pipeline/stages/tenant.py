"""The tenant stage (the spec's "identify tenant from connection metadata, apply per-tenant pool
and quota limits"; identified at login, server/handshake.py): counts the tenant's queries, holds
its `qps`, and refuses (42501) what would step out of its isolation: changing helios.tenant (rls)
or search_path (schema). First in the pipeline, before anything else sees the query."""
from types import SimpleNamespace

from ...limits import CONFIGURATION_LIMIT_EXCEEDED, Exceeded, Limit
from ...tenancy import INSUFFICIENT_PRIVILEGE
from ..stage import Stage, StageResult


class Tenant(Stage):
    name = "tenant"

    def __init__(self, config):
        super().__init__(config)
        self.buckets = {}  # tenant name -> (qps, its token bucket)

    @classmethod
    def enabled(cls, config):
        return config.tenancy.enabled

    def process(self, ctx):
        tenant = ctx.session.tenant
        if tenant is None:
            return StageResult.CONTINUE
        tenant.queries += 1
        why = tenant.refusal(ctx.sql)
        if why is not None:
            tenant.rejected += 1
            return StageResult.reject(INSUFFICIENT_PRIVILEGE, why)
        qps = tenant.cfg.qps
        if qps:
            known = self.buckets.get(tenant.name)
            if known is None or known[0] != qps:
                known = self.buckets[tenant.name] = (qps, Limit(SimpleNamespace(
                    name=f"tenant {tenant.name} qps", kind="token_bucket", key="tenant", match="", rate=qps,
                    burst=max(1, int(qps)), on_exceed="reject", max_wait_ms=0)))
            try:
                known[1].take(tenant.name)
            except Exceeded as e:
                tenant.rejected += 1
                return StageResult.reject(CONFIGURATION_LIMIT_EXCEEDED, str(e))
        return StageResult.CONTINUE
