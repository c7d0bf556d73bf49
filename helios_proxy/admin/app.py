"""The Flask app factory: JSON errors, bearer-token auth, one blueprint per resource.

Reading endpoints are open on loopback; every mutating endpoint (and every endpoint when the API
listens beyond loopback) needs `Authorization: Bearer <token>` of a role allowed to call it
(tokens.py). Requests naming a Host outside `admin.allowed_hosts` are refused (DNS rebinding), and
bodies are limited to `admin.max_body_bytes`.
"""
import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..config.loader import loopback

from . import (analytics, cache, graphql, health, metrics, openapi, ops, resources, sql, status, tenants, tokens,
               topology)
from .common import ApiError

log = logging.getLogger(__name__)
MUTATING = ("POST", "PUT", "PATCH", "DELETE")


def new_app(name, owner):
    """A Flask app with what every admin API has, the single process's and the workers' front
    (front.py) alike: JSON errors, the body limit, the Host check and the bearer tokens, all read
    from owner.config (a reload changes them)."""
    app = Flask(name)
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = owner.config.admin.max_body_bytes

    @app.before_request
    def authorize():
        admin = owner.config.admin
        limit = app.config["MAX_CONTENT_LENGTH"] = admin.max_body_bytes  # (reloadable)
        if (request.content_length or 0) > limit:  # refused before a byte of it is read
            raise ApiError(413, f"request body over admin.max_body_bytes ({limit})")
        check_host(admin)
        if request.path != "/graphql":  # (the gateway's own bearer tokens and roles: graphql/)
            check_token(admin)

    install_error_handlers(app)
    return app


def create_app(proxy):
    app = new_app("helios_proxy.admin", proxy)
    app.config["PROXY"] = proxy
    for module in (status, health, topology, resources, metrics, ops, sql, cache, analytics, tenants, graphql,
                   openapi):
        app.register_blueprint(module.bp)
    proxy.plugins.notify("register_admin_routes", app=app)
    return app


def check_host(config):
    """Refuse a Host header that names none of admin.allowed_hosts (a DNS-rebinding page in an
    operator's browser would name its own host)."""
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    host = host.strip("[]").lower()
    allowed = {h.strip("[]").lower() for h in config.allowed_hosts}
    allowed.add(config.listen.rpartition(":")[0].strip("[]").lower())  # the address it listens on
    if host not in allowed:
        raise ApiError(421, f"Host {request.host!r} is not one of admin.allowed_hosts")


def check_token(config):
    """Raise ApiError unless this request may go on (config: the [admin] section); a mutation is
    logged with the name of the token that made it."""
    needed = request.method in MUTATING or not loopback(config.listen)
    if not needed:
        return
    if not (config.token or config.tokens):
        raise ApiError(403, "set admin.token (or HELIOS_ADMIN__TOKEN) or admin.tokens to use this endpoint")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    who = tokens.identify(config, token) if scheme.lower() == "bearer" and token else None
    if who is None:
        raise ApiError(401, "missing or wrong bearer token")
    name, role = who
    needed_role = tokens.role_needed(request.method, request.path)
    if not tokens.allows(role, needed_role):
        raise ApiError(403, f"token {name!r} has role {role}; {request.method} {request.path} needs {needed_role}")
    if request.method in MUTATING:
        log.warning("admin API: %s %s by token %r (%s)", request.method, request.path, name, role)


def install_error_handlers(app):
    """Every error as JSON {"error": ...}."""
    @app.errorhandler(ApiError)
    def api_error(e):
        return jsonify(error=e.message), e.status

    @app.errorhandler(HTTPException)
    def http_error(e):
        response = jsonify(error=e.description or e.name)
        for name, value in e.get_headers():  # e.g. Allow on 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, e.code

    @app.errorhandler(Exception)
    def internal_error(e):
        current_app.logger.exception("admin API request failed")
        return jsonify(error=f"internal error: {type(e).__name__}"), 500
