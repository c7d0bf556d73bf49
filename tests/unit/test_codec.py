"""The sans-I/O codec: framing limits, streaming scanner, startup packets, options, error building."""
import os
import random
import struct

import pytest

from helios_proxy.errors import FatalError, ProtocolViolation
from helios_proxy.protocol import codec, messages as m
from helios_proxy.protocol.framing import MessageBuffer, StreamScanner
from helios_proxy.protocol.startup import (CANCEL_REQUEST, GSSENC_REQUEST, SSL_REQUEST, STARTUP, parse_options,
                                           parse_startup, startup_length)


def test_message_buffer_yields_whole_messages_across_chunks():
    stream = codec.query("select 1") + codec.SYNC + codec.query("x" * 70000)
    buf = MessageBuffer(1 << 20)
    got = []
    for i in range(0, len(stream), 7):
        buf.feed(stream[i:i + 7])
        while (msg := buf.next_message()) is not None:
            got.append(msg)
    assert [t for t, _ in got] == [b"Q", b"S", b"Q"]
    assert got[2][1] == b"x" * 70000 + b"\0"


@pytest.mark.parametrize("length", [0, 3, -1, 2**31 - 1, 1025])
def test_message_buffer_refuses_bad_lengths(length):
    buf = MessageBuffer(1024)
    buf.feed(b"Q" + struct.pack("!i", length))
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        buf.next()


def test_stream_scanner_finds_wanted_messages_in_any_chunking():
    stream = (codec.message(b"T", b"x" * 10) + codec.message(b"D", b"y" * 100000)
              + codec.parameter_status("TimeZone", "UTC") + codec.ready_for_query(b"T"))
    rng = random.Random(4)
    for _ in range(50):
        scanner = StreamScanner((ord("Z"), ord("S")))
        got, pos = [], 0
        while pos < len(stream):
            step = rng.randint(1, 9000)
            got += scanner.feed(stream[pos:pos + step])
            pos += step
        assert [(t, b) for t, b, _ in got] == [(ord("S"), b"TimeZone\0UTC\0"), (ord("Z"), b"T")]
        assert scanner.at_boundary()


def test_stream_scanner_reports_offsets_and_partial_tail():
    scanner = StreamScanner((ord("Z"),))
    data = codec.message(b"D", b"abc") + codec.ready_for_query()
    assert scanner.feed(data + b"Z\0") == [(ord("Z"), b"I", len(data))]
    assert scanner.partial() == 2
    assert scanner.feed(b"\0\0\5T") == [(ord("Z"), b"T", 4)]
    assert scanner.partial() == 0


def test_stream_scanner_refuses_bad_length():
    with pytest.raises(ProtocolViolation):
        StreamScanner(()).feed(b"D\x00\x00\x00\x01")


def test_parse_startup_kinds():
    assert parse_startup(codec.special_request(m.SSL_REQUEST_CODE)).kind == SSL_REQUEST
    assert parse_startup(codec.special_request(m.GSSENC_REQUEST_CODE)).kind == GSSENC_REQUEST
    cancel = parse_startup(codec.special_request(m.CANCEL_REQUEST_CODE, 42, -7))
    assert (cancel.kind, cancel.pid, cancel.secret) == (CANCEL_REQUEST, 42, -7)
    pkt = parse_startup(codec.startup_message({"user": "u", "database": "d", "_pq_.x": "1"}))
    assert (pkt.kind, pkt.params, pkt.extensions) == (STARTUP, {"user": "u", "database": "d"}, ["_pq_.x"])


@pytest.mark.parametrize("packet", [
    struct.pack("!ii", 9, m.PROTOCOL_V3) + b"u",          # no terminator
    struct.pack("!ii", 12, m.PROTOCOL_V3) + b"user\0",    # key without value
    struct.pack("!ii", 12, m.CANCEL_REQUEST_CODE) + b"\0\0\0\0",  # short cancel
])
def test_parse_startup_refuses_malformed(packet):
    with pytest.raises(ProtocolViolation):
        parse_startup(packet)


def test_unknown_protocol_major_is_0A000():
    with pytest.raises(FatalError) as info:
        parse_startup(struct.pack("!ii", 9, 4 << 16) + b"\0")
    assert info.value.sqlstate == "0A000"


@pytest.mark.parametrize("length", [-1, 0, 7, 10005, 2**31 - 1])  # 10000 + the length word: the most
def test_startup_length_limits(length):
    with pytest.raises(ProtocolViolation, match="invalid length of startup packet"):
        startup_length(struct.pack("!i", length), 10000)


def test_parse_options_like_postgres():
    assert parse_options(r"-c a=1 -cb=2 --c-d=3 -c e=x\ y") == {"a": "1", "b": "2", "c_d": "3", "e": "x y"}
    with pytest.raises(FatalError):
        parse_options("-d 5")


def test_error_response_fields_roundtrip():
    msg = codec.error_response("53300", "too many", "FATAL", detail="d", hint="h")
    assert msg[:1] == b"E"
    fields = codec.parse_fields(msg[5:])
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "53300", "M": "too many", "D": "d", "H": "h"}


def test_fuzz_message_buffer_never_raises_anything_but_protocol_violation():
    rng = random.Random(7)
    for _ in range(2000):
        buf = MessageBuffer(1 << 16)
        buf.feed(os.urandom(rng.randint(0, 64)))
        try:
            while buf.next() is not None:
                pass
        except ProtocolViolation:
            pass


def test_startup_length_counts_like_postgres():
    """MAX_STARTUP_PACKET_LENGTH bounds the packet without its 4-byte length word."""
    assert startup_length(struct.pack("!i", 10004), 10000) == 10004
