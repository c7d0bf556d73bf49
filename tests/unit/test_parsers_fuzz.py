"""Whatever bytes a server or a client sends, the parsers raise only the decoding errors the
callers turn into a protocol violation (errors.DECODING_ERRORS, and PermissionError for a SCRAM
refusal), never another exception that would end in a traceback."""
from hypothesis import HealthCheck, given, settings, strategies as st

from helios_proxy.errors import DECODING_ERRORS
from helios_proxy.frontend.statements import bind_names
from helios_proxy.pool.prepared import StatementBook
from helios_proxy.protocol import codec
from helios_proxy.protocol.scram import ScramClient

EXPECTED = (*DECODING_ERRORS, PermissionError)
FAST = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


def only_expected(fn, data):
    try:
        fn(data)
    except EXPECTED:
        pass


@FAST
@given(st.binary(max_size=64))
def test_backend_message_parsers(data):
    for parse in (codec.parse_fields, codec.parse_row_description, codec.parse_data_row,
                  codec.parse_parameter_status):
        only_expected(parse, data)


@FAST
@given(st.binary(max_size=64))
def test_client_statement_messages(data):
    only_expected(StatementBook().parse, data)
    only_expected(bind_names, data)


@FAST
@given(st.text(alphabet="rsiev=,abcAB0123456789+/", max_size=60), st.booleans())
def test_scram_client_against_any_server_message(text, with_nonce):
    client = ScramClient(password="pw")
    nonce = client.first().split("r=")[1]
    only_expected(client.final, (f"r={nonce}" if with_nonce else "") + text)
    only_expected(ScramClient(password="pw").verify, text)  # (a server-final before a server-first)
