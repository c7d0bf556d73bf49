"""What every blueprint uses: the proxy of the app, JSON errors, the JSON request body."""
from flask import current_app, request


class ApiError(Exception):
    """An error answered as JSON {"error": message} with an HTTP status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def proxy_of():
    return current_app.config["PROXY"]


def feature(attribute, off):
    """The proxy's part for an optional feature (its `attribute`), or 404 with `off`, which names
    the setting that turns it on."""
    part = getattr(proxy_of(), attribute)
    if part is None:
        raise ApiError(404, off)
    return part


def json_body():
    """The request's JSON object ({} when there is no body); 400 when it is not JSON."""
    if not request.get_data():
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data
