"""The tenant stage (the spec's "identify tenant from connection metadata, apply per-tenant pool
and quota limits"; identified at login, frontend/handshake.py): counts the tenant's queries and
refuses (42501) the obvious attempts to change helios.tenant (rls) or search_path (schema), a
courtesy: what isolates a tenant is helios.tenant(), which PostgreSQL checks (tenancy/proof.py).
Its `qps` counts every execution, with the limits (limits/admission.py, the rate-limit stage).
First in the pipeline, before anything else sees the query."""
from ...tenancy import INSUFFICIENT_PRIVILEGE
from ..stage import Stage, StageResult


class Tenant(Stage):
    name = "tenant"

    @classmethod
    def enabled(cls, config):
        return config.tenancy.enabled

    def process(self, ctx):
        tenant = ctx.session.identity.tenant
        if tenant is None:
            return StageResult.CONTINUE
        tenant.queries += 1
        why = tenant.refusal(ctx.sql)
        if why is not None:
            tenant.rejected += 1
            return StageResult.reject(INSUFFICIENT_PRIVILEGE, why)
        return StageResult.CONTINUE
