"""Error classes of the proxy, each carrying the SQLSTATE a client sees (PostgreSQL errcodes)."""
import struct
from contextlib import contextmanager

# SQLSTATE codes the proxy itself raises.
PROTOCOL_VIOLATION = "08P01"
CONNECTION_FAILURE = "08006"
CONNECTION_EXCEPTION = "08000"
SQLCLIENT_UNABLE_TO_ESTABLISH = "08001"
FEATURE_NOT_SUPPORTED = "0A000"
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"
TOO_MANY_CONNECTIONS = "53300"
CONFIGURATION_LIMIT_EXCEEDED = "53400"
PROGRAM_LIMIT_EXCEEDED = "54000"
ADMIN_SHUTDOWN = "57P01"
CANNOT_CONNECT_NOW = "57P03"
IDLE_SESSION_TIMEOUT = "57P05"
QUERY_CANCELED = "57014"
INTERNAL_ERROR = "XX000"
IDLE_IN_TRANSACTION_TIMEOUT = "25P03"
INSUFFICIENT_PRIVILEGE = "42501"
INVALID_PARAMETER_VALUE = "22023"
SERIALIZATION_FAILURE = "40001"
TRANSACTION_RESOLUTION_UNKNOWN = "08007"
DUPLICATE_PREPARED_STATEMENT = "42P05"
INVALID_SQL_STATEMENT_NAME = "26000"


class ProxyError(Exception):
    """An error to report to a client as an ErrorResponse with `sqlstate`."""

    sqlstate = INTERNAL_ERROR
    severity = "ERROR"

    def __init__(self, message, sqlstate=None, detail=None, hint=None, severity=None):
        super().__init__(message)
        self.message = message
        if sqlstate:
            self.sqlstate = sqlstate
        if severity:
            self.severity = severity
        self.detail = detail
        self.hint = hint


class FatalError(ProxyError):
    """An error after which the client connection is closed."""

    severity = "FATAL"


class ProtocolViolation(FatalError):
    sqlstate = PROTOCOL_VIOLATION


class AuthenticationFailed(FatalError):
    sqlstate = INVALID_PASSWORD


class TooManyConnections(FatalError):
    sqlstate = TOO_MANY_CONNECTIONS


class BackendError(FatalError):
    """The backend refused or failed; `fields` holds its own ErrorResponse when it sent one."""

    sqlstate = CONNECTION_FAILURE

    def __init__(self, message, fields=None, sqlstate=None, **kw):
        fields = fields or {}
        super().__init__(fields.get("M", message), sqlstate=fields.get("C", sqlstate), detail=fields.get("D"),
                         hint=fields.get("H"), **kw)
        self.fields = fields


class ConfigError(Exception):
    """An invalid configuration; the message names the key and the bad value."""


def node_unreachable(exc):
    """Whether exc means the server itself is down or going away (not a refusal of this client):
    a socket error, a connection failure (08xxx but a protocol violation: a server that answers
    garbage is up, and waiting will not mend it) or a shutdown/startup/recovery refusal (57P01-03)."""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, BackendError) and (exc.sqlstate.startswith("08") and exc.sqlstate != PROTOCOL_VIOLATION or
                                              exc.sqlstate in ("57P01", "57P02", "57P03"))


# What decoding a truncated or malformed message raises (a missing NUL, a short field, bad UTF-8).
DECODING_ERRORS = (IndexError, ValueError, struct.error, UnicodeDecodeError)


@contextmanager
def malformed(what, error=None):
    """Turn a decoding failure inside the block into ProtocolViolation "invalid <what>" (or into
    error(message) when given), never a traceback."""
    try:
        yield
    except DECODING_ERRORS as e:
        message = f"invalid {what}"
        raise (error(message) if error else ProtocolViolation(message)) from e
