"""Startup-phase packets from a client: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest."""
from dataclasses import dataclass, field
from struct import unpack_from

from . import messages as m
from ..errors import FEATURE_NOT_SUPPORTED, FatalError, ProtocolViolation

SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST, STARTUP = "ssl", "gssenc", "cancel", "startup"


@dataclass
class StartupPacket:
    kind: str
    minor: int = 0                               # requested protocol minor version (STARTUP)
    params: dict = field(default_factory=dict)   # user, database, options, ...
    extensions: list = field(default_factory=list)  # "_pq_." options we do not support
    pid: int = 0                                 # CANCEL
    secret: int = 0                              # CANCEL


def startup_length(header, max_length):
    """Validate the 4-byte length that opens every startup packet and return it. As in PostgreSQL,
    max_length (MAX_STARTUP_PACKET_LENGTH) bounds the packet without its length word."""
    length = unpack_from("!i", header, 0)[0]
    if length < 8 or length - 4 > max_length:
        raise ProtocolViolation("invalid length of startup packet")
    return length


def parse_startup(packet):
    """Parse a whole startup packet (length prefix included)."""
    code = unpack_from("!i", packet, 4)[0]
    if code == m.SSL_REQUEST_CODE and len(packet) == 8:
        return StartupPacket(SSL_REQUEST)
    if code == m.GSSENC_REQUEST_CODE and len(packet) == 8:
        return StartupPacket(GSSENC_REQUEST)
    if code == m.CANCEL_REQUEST_CODE:
        if len(packet) != 16:
            raise ProtocolViolation("invalid length of cancel request packet")
        pid, secret = unpack_from("!ii", packet, 8)
        return StartupPacket(CANCEL_REQUEST, pid=pid, secret=secret)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise FatalError(f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
                         sqlstate=FEATURE_NOT_SUPPORTED)
    params, extensions = _parse_params(packet[8:])
    return StartupPacket(STARTUP, minor=minor, params=params, extensions=extensions)


def _parse_params(body):
    if not body or body[-1] != 0:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    content = bytes(body[:-1])  # "key\0value\0...": every string ends with its own NUL
    if content and content[-1] != 0:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    parts = content[:-1].split(b"\0") if content else []
    if len(parts) % 2:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    params, extensions = {}, []
    for i in range(0, len(parts), 2):
        try:
            key, value = parts[i].decode(), parts[i + 1].decode()
        except UnicodeDecodeError as e:
            raise ProtocolViolation("invalid byte sequence in startup packet") from e
        if key.startswith("_pq_."):
            extensions.append(key)
        else:
            params[key] = value
    return params, extensions


def parse_options(options):
    """Split a libpq `options` string ("-c a=b --c=d") into {name: value}, as the backend does.

    Backslash escapes a space, as in PostgreSQL's pg_split_opts(). Switches other than -c/--name
    raise FatalError, since the proxy cannot apply them per session.
    """
    words, cur, escape = [], [], False
    for ch in options:
        if escape:
            cur.append(ch)
            escape = False
        elif ch == "\\":
            escape = True
        elif ch.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        words.append("".join(cur))
    settings, i = {}, 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            assignment, i = words[i + 1], i + 2
        elif word.startswith("-c") and len(word) > 2:
            assignment, i = word[2:], i + 1
        elif word.startswith("--") and "=" in word:
            assignment, i = word[2:], i + 1
        else:
            raise FatalError(f"unsupported command-line option in \"options\": {word}",
                             sqlstate=FEATURE_NOT_SUPPORTED,
                             hint="Only -c name=value and --name=value settings are supported.")
        name, sep, value = assignment.partition("=")
        if not sep:
            raise FatalError(f"-c {name} requires a value", sqlstate="42601")
        settings[name.replace("-", "_").lower()] = value
    return settings
