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


def json_body():
    """The request's JSON object ({} when there is no body); 400 when it is not JSON."""
    if not request.get_data():
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data
