"""Named constants for every PostgreSQL v3 message type and startup packet code (protocol docs, 55.7)."""

# Special startup packet codes (sent where a protocol version would be).
PROTOCOL_V3 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Frontend (client -> server) message types.
BIND = b"B"
CLOSE = b"C"
COPY_DATA = b"d"
COPY_DONE = b"c"
COPY_FAIL = b"f"
DESCRIBE = b"D"
EXECUTE = b"E"
FLUSH = b"H"
FUNCTION_CALL = b"F"
PARSE = b"P"
PASSWORD = b"p"  # also SASLInitialResponse, SASLResponse, GSSResponse
QUERY = b"Q"
SYNC = b"S"
TERMINATE = b"X"

# Backend (server -> client) message types.
AUTHENTICATION = b"R"
BACKEND_KEY_DATA = b"K"
BIND_COMPLETE = b"2"
CLOSE_COMPLETE = b"3"
COMMAND_COMPLETE = b"C"
COPY_IN_RESPONSE = b"G"
COPY_OUT_RESPONSE = b"H"
COPY_BOTH_RESPONSE = b"W"
DATA_ROW = b"D"
EMPTY_QUERY_RESPONSE = b"I"
ERROR_RESPONSE = b"E"
FUNCTION_CALL_RESPONSE = b"V"
NEGOTIATE_PROTOCOL_VERSION = b"v"
NO_DATA = b"n"
NOTICE_RESPONSE = b"N"
NOTIFICATION_RESPONSE = b"A"
PARAMETER_DESCRIPTION = b"t"
PARAMETER_STATUS = b"S"
PARSE_COMPLETE = b"1"
PORTAL_SUSPENDED = b"s"
READY_FOR_QUERY = b"Z"
ROW_DESCRIPTION = b"T"

# Authentication request codes carried in an AUTHENTICATION message.
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_GSS = 7
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# ReadyForQuery transaction status bytes.
TX_IDLE = b"I"
TX_IN_BLOCK = b"T"
TX_FAILED = b"E"

# Frontend messages that belong to the extended query protocol (their effects end at Sync).
EXTENDED = frozenset(b"PBDECH")

# ErrorResponse / NoticeResponse field codes.
FIELD_SEVERITY = "S"
FIELD_SEVERITY_NONLOCALIZED = "V"
FIELD_CODE = "C"
FIELD_MESSAGE = "M"
FIELD_DETAIL = "D"
FIELD_HINT = "H"
