"""Differential protocol tests: the same raw message sequences sent straight to PostgreSQL and through
the proxy must give the same replies (modulo BackendKeyData and ParameterStatus values)."""
import struct

import pytest

from helios_proxy.protocol import codec

from .wire import Wire


def describe_statement(name):
    return codec.message(b"D", b"S" + codec.cstr(name))


def close_statement(name):
    return codec.message(b"C", b"S" + codec.cstr(name))


SEQUENCES = {
    "multi-statement with error": [codec.query("select 1 as a; select 1/0; select 2")],
    "empty query": [codec.query("")],
    "transaction status": [codec.query("begin"), codec.query("select x"), codec.query("select 1"),
                           codec.query("rollback")],
    "extended unnamed": [codec.parse("select $1::int + 1") + codec.bind(["41"]) + codec.describe_portal()
                         + codec.execute() + codec.SYNC],
    "extended named, reuse, close": [
        codec.parse("select $1::text || 'x'", name="s1") + describe_statement("s1") + codec.SYNC,
        codec.bind(["a"], statement="s1") + codec.execute() + codec.bind(["b"], statement="s1")
        + codec.execute() + codec.SYNC,
        codec.parse("select 1", name="s1") + codec.SYNC,  # duplicate name: 42P05
        close_statement("s1") + codec.SYNC],
    "error skips to sync": [codec.parse("select $1::int") + codec.bind(["notint"]) + codec.execute()
                            + codec.parse("select 'skipped'") + codec.SYNC + codec.query("select 'after'")],
    "pipelined syncs": [b"".join(codec.parse(f"select {i}") + codec.bind([]) + codec.execute() + codec.SYNC
                                 for i in range(20))],
    "portal suspended": [codec.query("begin"),
                         codec.parse("select generate_series(1, 10)") + codec.bind([], portal="p")
                         + codec.execute("p", 3) + codec.execute("p", 3) + codec.SYNC,
                         codec.query("commit")],
    "flush without sync": [codec.parse("select 42", name="f") + codec.message(b"H"),
                           codec.bind([], statement="f") + codec.execute() + codec.SYNC],
    "copy in": [codec.query("create temp table ct(a int, b text)"),
                codec.query("copy ct from stdin"),
                codec.message(b"d", b"1\tone\n2\ttwo\n") + codec.message(b"c"),
                codec.query("select * from ct order by a")],
    "copy fail": [codec.query("create temp table cf(a int)"), codec.query("copy cf from stdin"),
                  codec.message(b"d", b"1\n") + codec.message(b"f", b"client gave up\0")],
    "copy out": [codec.query("copy (select g, 'x' from generate_series(1,5) g) to stdout")],
    "notice and error fields": [codec.query("do $$ begin raise notice 'n1' using detail = 'dd', hint = 'hh'; "
                                            "raise exception 'boom' using errcode = '22023'; end $$")],
}
# Messages that start a sub-exchange the client must feed before a ReadyForQuery comes.
WAITS_FOR_INPUT = (b"G",)


def run(port, sequence):
    w = Wire(port)
    w.startup(user="postgres", database="postgres")
    replies = []
    for chunk in sequence:
        w.send(chunk)
        expected = chunk.count(b"S\x00\x00\x00\x04") + (chunk[:1] == b"Q")
        if chunk[:1] == b"d" or (chunk[:1] == b"P" and not expected):
            expected = 0 if chunk[:1] == b"P" else 1
        got = 0
        while got < expected:
            msg = w.read()
            assert msg is not None, "connection closed"
            replies.append(msg)
            if msg[0] == b"Z":
                got += 1
            if msg[0] in WAITS_FOR_INPUT:
                break
    w.send(codec.TERMINATE)
    w.close()
    return [normalize(m) for m in replies]


def normalize(msg):
    mtype, body = msg
    if mtype == b"E" or mtype == b"N":
        fields = codec.parse_fields(body)
        for source_field in "FLR":  # file/line/routine of the C source: the proxy's own errors have none
            fields.pop(source_field, None)
        return mtype, tuple(sorted(fields.items()))
    if mtype == b"T":  # a temp table's OID differs between the two runs; zero it
        body, count, pos = bytearray(body), struct.unpack_from("!h", body)[0], 2
        for _ in range(count):
            pos = body.index(b"\0", pos) + 1
            body[pos:pos + 4] = b"\0\0\0\0"
            pos += 18
        return mtype, bytes(body)
    return mtype, body


@pytest.fixture(scope="module", params=["session", "transaction"])
def pooled_proxy(request, cluster, tmp_path_factory):
    """The proxy in each pool mode that can run every sequence (statement mode refuses BEGIN)."""
    from .fix_proxy import ProxyProcess
    p = ProxyProcess(str(tmp_path_factory.mktemp("diff")), cluster,
                     pool={"mode": request.param, "max_size": 2}).start()
    yield p
    p.stop()


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_same_replies_direct_and_through_proxy(pooled_proxy, cluster, name):
    direct = run(cluster.primary_port, SEQUENCES[name])
    via = run(pooled_proxy.port, SEQUENCES[name])
    assert via == direct
    assert any(t == b"Z" for t, _ in direct)


def test_startup_replies_match_apart_from_the_secret_key(proxy, cluster):
    def greeting(port):
        w = Wire(port)
        msgs = w.startup(user="postgres", database="postgres", application_name="diff")
        w.close()
        return msgs
    direct, via = greeting(cluster.primary_port), greeting(proxy.port)
    strip = lambda msgs: sorted((t, b"" if t == b"K" else body) for t, body in msgs)  # noqa: E731
    assert strip(via) == strip(direct)
    key = next(body for t, body in via if t == b"K")
    assert struct.unpack("!i", key[:4])[0] > 0  # a real backend pid in session mode
