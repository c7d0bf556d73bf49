"""The Flask app factory: JSON errors, bearer-token auth, one blueprint per resource.

Reading endpoints are open on loopback; every mutating endpoint (and every endpoint when the API
listens beyond loopback) needs `Authorization: Bearer <admin.token>`, compared in constant time.
"""
import hmac

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..config.loader import loopback

from . import health, metrics, openapi, ops, resources, sql, status, topology
from .common import ApiError

MUTATING = ("POST", "PUT", "PATCH", "DELETE")


def create_app(proxy):
    app = Flask("helios_proxy.admin")
    app.config["PROXY"] = proxy
    app.json.sort_keys = False

    @app.before_request
    def authorize():
        check_token(proxy.config.admin)

    install_error_handlers(app)
    for module in (status, health, topology, resources, metrics, ops, sql, openapi):
        app.register_blueprint(module.bp)
    proxy.plugins.notify("register_admin_routes", app=app)
    return app


def check_token(config):
    """Raise ApiError unless this request may go on (config: the [admin] section)."""
    needed = request.method in MUTATING or not loopback(config.listen)
    if not needed:
        return
    if not config.token:
        raise ApiError(403, "set admin.token (or HELIOS_ADMIN__TOKEN) to use this endpoint")
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), config.token.encode()):
        raise ApiError(401, "missing or wrong bearer token")


def install_error_handlers(app):
    """Every error as JSON {"error": ...}."""
    @app.errorhandler(ApiError)
    def api_error(e):
        return jsonify(error=e.message), e.status

    @app.errorhandler(HTTPException)
    def http_error(e):
        return jsonify(error=e.description or e.name), e.code

    @app.errorhandler(Exception)
    def internal_error(e):
        current_app.logger.exception("admin API request failed")
        return jsonify(error=f"internal error: {type(e).__name__}"), 500
