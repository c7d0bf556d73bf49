"""Building and parsing individual messages (both directions); no I/O."""
from functools import lru_cache
from struct import pack, unpack_from

from . import messages as m
from .. import speedups


def message(mtype, body=b""):
    return mtype + pack("!i", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0" if isinstance(s, str) else s + b"\0"


# (str, next_pos) for the NUL-terminated string starting at pos (speedups.py_read_cstr; compiled
# where the helper was built: a named statement's execution reads three)
read_cstr = speedups.read_cstr


# --- backend messages the proxy itself sends to clients ---------------------------------------

def error_fields(severity, code, text, detail=None, hint=None):
    fields = [(m.FIELD_SEVERITY, severity), (m.FIELD_SEVERITY_NONLOCALIZED, severity),
              (m.FIELD_CODE, code), (m.FIELD_MESSAGE, text)]
    if detail:
        fields.append((m.FIELD_DETAIL, detail))
    if hint:
        fields.append((m.FIELD_HINT, hint))
    return b"".join(k.encode() + cstr(v) for k, v in fields) + b"\0"


def error_response(code, text, severity="ERROR", detail=None, hint=None):
    return message(m.ERROR_RESPONSE, error_fields(severity, code, text, detail, hint))


def notice_response(code, text, severity="NOTICE", detail=None, hint=None):
    return message(m.NOTICE_RESPONSE, error_fields(severity, code, text, detail, hint))


def error_from(exc):
    """ErrorResponse for a ProxyError (or a BackendError carrying the backend's own fields)."""
    fields = getattr(exc, "fields", None)
    if fields:
        return message(m.ERROR_RESPONSE, encode_fields(fields))
    return error_response(exc.sqlstate, exc.message, exc.severity, exc.detail, exc.hint)


def encode_fields(fields):
    return b"".join(k.encode() + cstr(v) for k, v in fields.items()) + b"\0"


def parse_fields(body):
    """Parse an ErrorResponse/NoticeResponse body into {field_code: text}."""
    fields, pos = {}, 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        text, pos = read_cstr(body, pos + 1)
        fields[code] = text
    return fields


def text_result(column, value, tag):
    """A one-column, one-row text result as a server sends it (RowDescription, DataRow, CommandComplete)."""
    description = pack("!h", 1) + cstr(column) + pack("!ihihih", 0, 0, 25, -1, -1, 0)
    data = value.encode()
    return (message(m.ROW_DESCRIPTION, description) + message(m.DATA_ROW, pack("!hi", 1, len(data)) + data)
            + message(m.COMMAND_COMPLETE, cstr(tag)))


def table_result(columns, rows, tag):
    """A text result of any shape (RowDescription, DataRows, CommandComplete); None is NULL."""
    description = pack("!h", len(columns)) + b"".join(cstr(c) + pack("!ihihih", 0, 0, 25, -1, -1, 0)
                                                     for c in columns)
    out = [message(m.ROW_DESCRIPTION, description)]
    for row in rows:
        cells = [pack("!h", len(row))]
        for value in row:
            if value is None:
                cells.append(pack("!i", -1))
            else:
                data = str(value).encode()
                cells.append(pack("!i", len(data)) + data)
        out.append(message(m.DATA_ROW, b"".join(cells)))
    out.append(message(m.COMMAND_COMPLETE, cstr(tag)))
    return b"".join(out)


def parse_row_description(body):
    """Column names of a RowDescription."""
    count, pos, names = unpack_from("!h", body)[0], 2, []
    for _ in range(count):
        name, pos = read_cstr(body, pos)
        names.append(name)
        pos += 18
    return names


def ready_for_query(status=m.TX_IDLE):
    return message(m.READY_FOR_QUERY, status)


@lru_cache(maxsize=1024)  # (a login's greeting: the same few dozen pairs for every client of a pool)
def parameter_status(name, value):
    return message(m.PARAMETER_STATUS, cstr(name) + cstr(value))


def backend_key_data(pid, secret):
    return message(m.BACKEND_KEY_DATA, pack("!ii", pid, secret))


def authentication(code, payload=b""):
    return message(m.AUTHENTICATION, pack("!i", code) + payload)


def negotiate_protocol_version(version, unrecognized):
    """version: the newest protocol the server speaks, major << 16 | minor (3.0 is 0x00030000)."""
    body = pack("!ii", version, len(unrecognized)) + b"".join(cstr(o) for o in unrecognized)
    return message(m.NEGOTIATE_PROTOCOL_VERSION, body)


# --- frontend messages the proxy sends to backends -------------------------------------------

def startup_message(params):
    body = pack("!i", m.PROTOCOL_V3) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return pack("!i", len(body) + 4) + body


def special_request(code, *ints):
    """SSLRequest, GSSENCRequest or CancelRequest: a length, a code, optional int32s."""
    return pack("!ii", 8 + 4 * len(ints), code) + b"".join(pack("!i", i) for i in ints)


def query(sql):
    return message(m.QUERY, cstr(sql))


def password(secret):
    return message(m.PASSWORD, cstr(secret))


def sasl_initial_response(mechanism, data):
    return message(m.PASSWORD, cstr(mechanism) + pack("!i", len(data)) + data)


def sasl_response(data):
    return message(m.PASSWORD, data)


def parse(sql, name="", param_types=()):
    return message(m.PARSE, cstr(name) + cstr(sql) + pack("!h", len(param_types))
                   + b"".join(pack("!i", t) for t in param_types))


def bind(params, portal="", statement=""):
    """Bind text-format parameters (None is NULL), text-format results."""
    body = cstr(portal) + cstr(statement) + pack("!hh", 0, len(params))
    for p in params:
        if p is None:
            body += pack("!i", -1)
        else:
            data = p.encode() if isinstance(p, str) else p
            body += pack("!i", len(data)) + data
    return message(m.BIND, body + pack("!h", 0))


def describe_portal(portal=""):
    return message(m.DESCRIBE, b"P" + cstr(portal))


def execute(portal="", max_rows=0):
    return message(m.EXECUTE, cstr(portal) + pack("!i", max_rows))


SYNC = message(m.SYNC)
FLUSH = message(m.FLUSH)
TERMINATE = message(m.TERMINATE)


# --- parsing of backend replies the proxy consumes itself -------------------------------------

def parse_data_row(body):
    """Return a DataRow's columns as bytes (None for NULL)."""
    count = unpack_from("!h", body, 0)[0]
    cols, pos = [], 2
    for _ in range(count):
        size = unpack_from("!i", body, pos)[0]
        pos += 4
        if size < 0:
            cols.append(None)
        else:
            cols.append(bytes(body[pos:pos + size]))
            pos += size
    return cols


def parse_parameter_status(body):
    name, pos = read_cstr(body, 0)
    value, _ = read_cstr(body, pos)
    return name, value
