"""The client's unnamed prepared statement survives whatever the proxy does between a client's
batches (frontend/unnamed.py): a client that parses the unnamed statement in one batch (Parse +
Sync, or Parse + Flush) and binds it in the next, as pg8000's native run() does, gets what
PostgreSQL gives it, in both pool modes, with replay on, for writes, SET, DDL and large texts; and never runs another client's unnamed statement."""
import pytest

from helios_proxy.protocol import codec
from tests.wire import Wire, error_of


def split_batches(w, sql, params=(), flush=False):
    """Parse in one batch (Sync, or Flush), Bind/Execute/Sync of the unnamed statement in the next."""
    w.send(codec.parse(sql) + (codec.FLUSH if flush else codec.SYNC))
    first = [w.read()] if flush else w.until_ready()
    w.send(codec.bind(list(params)) + codec.describe_portal() + codec.execute() + codec.SYNC)
    return first, w.until_ready()


def rows(messages):
    return [codec.parse_data_row(body) for mtype, body in messages if mtype == b"D"]


@pytest.fixture(params=["transaction", "session"])
def replaying(request, start_proxy, direct):
    direct.cursor().execute("DROP TABLE IF EXISTS un_t; CREATE TABLE un_t (v text)")
    return start_proxy(pool={"mode": request.param, "max_size": 4}, replay={"enabled": True})


def connect(proxy):
    w = Wire(proxy.port)
    assert w.startup(user="postgres", database="postgres")[-1][0] == b"Z"
    return w


@pytest.mark.parametrize("flush", [False, True])
def test_a_write_parsed_in_one_batch_and_bound_in_the_next_runs_once(replaying, direct, flush):
    w = connect(replaying)
    for i in range(3):
        first, second = split_batches(w, "INSERT INTO un_t (v) VALUES ($1)", [f"x{i}"], flush)
        assert first[0][0] == b"1" and error_of(second) is None, second  # ParseComplete, then no error
        assert [m[0] for m in second][-2:] == [b"C", b"Z"]
    first, second = split_batches(w, "SELECT count(*) FROM un_t", flush=flush)
    assert rows(second) == [[b"3"]]  # (the next query does not hang, and sees the three)
    cur = direct.cursor()
    cur.execute("SELECT array_agg(v ORDER BY v) FROM un_t")
    assert cur.fetchone()[0] == ["x0", "x1", "x2"]  # each stored once
    w.close()


@pytest.mark.parametrize("sql", ["SET application_name = 'un_split'", "CREATE TEMP TABLE IF NOT EXISTS un_tmp (x int)",
                                 "SELECT repeat('x', 70000) AS big"])
def test_settings_ddl_and_large_texts_parsed_apart_from_their_bind(replaying, sql):
    w = connect(replaying)
    first, second = split_batches(w, sql)
    assert error_of(second) is None, error_of(second)
    first, second = split_batches(w, "SELECT current_setting('application_name')")
    assert error_of(second) is None
    w.close()


def test_a_query_destroys_the_unnamed_statement_as_in_postgresql(replaying):
    w = connect(replaying)
    w.send(codec.parse("SELECT 1") + codec.SYNC)
    w.until_ready()
    w.send(codec.query("SELECT 2"))
    w.until_ready()
    w.send(codec.bind([]) + codec.execute() + codec.SYNC)
    assert error_of(w.until_ready())["C"] == "26000"
    w.close()


def test_a_bind_never_runs_another_clients_unnamed_statement(start_proxy):
    proxy = start_proxy(pool={"mode": "transaction", "max_size": 1})  # one server connection for both
    a, b = connect(proxy), connect(proxy)
    a.send(codec.parse("SELECT 'secret of a'") + codec.SYNC)
    a.until_ready()
    b.send(codec.bind([]) + codec.describe_portal() + codec.execute() + codec.SYNC)
    answer = b.until_ready()
    assert error_of(answer)["C"] == "26000" and not rows(answer)
    a.send(codec.bind([]) + codec.describe_portal() + codec.execute() + codec.SYNC)  # a's own: still there
    assert rows(a.until_ready()) == [[b"secret of a"]]
    a.close(), b.close()
