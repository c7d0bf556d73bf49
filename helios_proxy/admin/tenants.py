"""Tenants (tenancy/): GET /tenants, GET/PUT/DELETE /tenants/NAME, POST /tenants. Changes are kept
in tenancy.tenants_file and apply to new logins at once."""
from flask import Blueprint, jsonify

from ..errors import ConfigError
from .common import ApiError, feature, json_body, proxy_of

bp = Blueprint("tenants", __name__)


def _tenants():
    return feature("tenants", "multi-tenancy is off (tenancy.enabled = false)")


@bp.get("/tenants")
def listing():
    """Every tenant: its settings, connections now, logins, queries, errors, bytes in and out,
    refused logins and queries."""
    return jsonify(_tenants().view(proxy_of().sessions))


@bp.get("/tenants/<name>")
def one(name):
    tenant = _tenants().by_name.get(name)
    if tenant is None:
        raise ApiError(404, f"no tenant {name!r}")
    return jsonify(tenant.view(list(proxy_of().sessions)))


def _put(name, body):
    try:
        return _tenants().put(name, {k: v for k, v in body.items() if k != "name"}).view()
    except ConfigError as e:
        raise ApiError(400, str(e)) from None
    except OSError as e:
        raise ApiError(500, f"cannot keep the change: {e}") from None


@bp.post("/tenants")
def create():
    """{"name": ..., "isolation": ..., ...}: a new tenant (409 if the name exists)."""
    body = json_body()
    name = body.get("name")
    if not isinstance(name, str) or not name or "." in name:
        raise ApiError(400, '"name" must be a tenant name (no dots)')
    if name in _tenants().by_name:
        raise ApiError(409, f"tenant {name!r} exists (PUT /tenants/{name} changes it)")
    return jsonify(_put(name, body)), 201


@bp.put("/tenants/<name>")
def replace(name):
    """The tenant's settings, replaced whole (missing keys take their defaults)."""
    return jsonify(_put(name, json_body()))


@bp.delete("/tenants/<name>")
def delete(name):
    """New logins of the tenant are refused; its connected sessions go on until they end."""
    if not _tenants().delete(name):
        raise ApiError(404, f"no tenant {name!r}")
    return jsonify(deleted=name)
