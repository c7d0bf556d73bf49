"""Plugins end to end: the example packages under plugins/ installed through their entry points (into
a throwaway folder on the proxy's PYTHONPATH, never into the user's venv), test plugins from
tests/plugins/ by module name, and WASM modules, all in a real `helios-proxy run` against the real
cluster."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import psycopg
import psycopg2
import pytest

from helios_proxy.protocol import codec

from .background import Probe
from .wire import Wire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "plugins", "wasm-examples")
HERE = os.path.join(ROOT, "tests", "plugins")
HELIOS = os.path.join(os.path.dirname(sys.executable), "helios-proxy")
ENV = {"PYTHONPATH": ROOT}


@pytest.fixture(scope="session")
def examples(tmp_path_factory):
    """The example plugin packages installed (with their entry points) into a folder of their own;
    a proxy started with ENV finds them there. Nothing is installed into the venv, nothing is written
    into the checkout (built from copies). (Built with the
    venv's setuptools and wheel, the test extras: a build environment of their own per package
    took 6 s more.)"""
    target, sources = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("plugin-sources")
    copies = [shutil.copytree(os.path.join(ROOT, "plugins", name), sources / name)  # (a build writes build/ and
              for name in ("helios-query-guard", "helios-audit-log")]              # *.egg-info next to the sources)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), *map(str, copies)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ENV["PYTHONPATH"] = os.pathsep.join((ROOT, str(target)))
    yield target
    ENV["PYTHONPATH"] = ROOT


needs_examples = pytest.mark.usefixtures("examples")


@pytest.fixture
def plugin_proxy(cluster, tmp_path):
    from .fix_proxy import ProxyProcess
    started = []

    def make(plugins, **sections):
        p = ProxyProcess(str(tmp_path), cluster, plugins=plugins, **sections).start(env=ENV)
        started.append(p)
        return p
    yield make
    for p in started:
        p.stop()


@needs_examples
def test_helios_proxy_plugins_lists_the_installed_examples():
    out = subprocess.run([HELIOS, "plugins"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **ENV})
    assert out.returncode == 0, out.stderr
    assert re.search(r"query_guard: entry point helios_query_guard \(helios-query-guard [\d.]+\); hooks: "
                     r"on_query_start", out.stdout)
    assert "audit_log: entry point helios_audit_log:plugin" in out.stdout


@needs_examples
def test_query_guard_rejects_unbounded_delete_through_psql(plugin_proxy, direct, psql_bin):
    direct.cursor().execute("drop table if exists guarded; create table guarded (id int); "
                            "insert into guarded values (1), (2)")
    proxy = plugin_proxy({})
    psql = [psql_bin, "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "postgres", "-X", "-v", "VERBOSITY=verbose",
            "-c"]
    out = subprocess.run(psql + ["delete from guarded"], capture_output=True, text=True, timeout=20)
    assert out.returncode != 0 and "P0001" in out.stderr and "DELETE without WHERE refused" in out.stderr
    assert subprocess.run(psql + ["delete from guarded where id = 1"], capture_output=True, timeout=20).returncode == 0
    cur = direct.cursor()
    cur.execute("select count(*) from guarded")
    assert cur.fetchone()[0] == 1
    with pytest.raises(psycopg2.Error) as info:
        proxy.query("update guarded set id = 3")
    assert info.value.pgcode == "P0001"
    # disabled by the config: the same statement runs
    off = plugin_proxy({"query_guard": {"enabled": False}})
    assert off.query("update guarded set id = 3") == 1


def test_rewrite_and_respond_and_failure_isolation(plugin_proxy):
    proxy = plugin_proxy({"modules": ["tests.plugins.rewrite", "tests.plugins.broken"],
                          "tests.plugins.broken": {"budget_ms": 50}})
    assert proxy.query("select 'rewrite me'") == [("rewritten by a plugin",)]
    assert proxy.query("show plugin_answer") == [("from the proxy",)]
    assert proxy.query("select 'boom'") == [("boom",)]        # fail-open: the query goes on
    started = time.monotonic()
    assert proxy.query("select 'slow'") == [("slow",)]        # cut at its budget
    assert time.monotonic() - started < 0.9
    out = proxy.output()
    assert "plugin tests.plugins.broken failed in on_query_start: RuntimeError: boom" in out
    assert "over its budget of 50 ms" in out
    counts = proxy.api("GET", "/metrics")[1]["plugins"]["tests.plugins.broken"]
    assert counts["failures"] == 2 and counts["calls"] >= 3
    closed = plugin_proxy({"modules": ["tests.plugins.broken"], "tests.plugins.broken": {"policy": "fail-closed"}})
    with pytest.raises(psycopg2.Error) as info:
        closed.query("select 'boom'")
    assert info.value.pgcode == "XX000" and "plugin tests.plugins.broken failed" in str(info.value)
    assert closed.query("select 1") == [(1,)]


def test_a_plugins_answer_in_the_extended_protocol(plugin_proxy):
    """psycopg 3 sends every query through the extended protocol: a plugin's answer reaches it
    there too (unnamed and prepared by name), an Execute's row limit suspends the portal as
    PostgreSQL does, and binary results (which the proxy does not make) are refused with 0A000."""
    proxy = plugin_proxy({"modules": ["tests.plugins.rewrite"]})
    for threshold in (None, 0):
        with psycopg.connect(proxy.dsn(), autocommit=True, prepare_threshold=threshold) as conn:
            for _ in range(3):
                assert conn.execute("show plugin_rows").fetchall() == [("1",), ("2",), ("3",)]
                assert conn.execute("show plugin_answer").fetchone() == ("from the proxy",)
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="text format only"):
                conn.cursor(binary=True).execute("show plugin_answer")
            assert conn.execute("select 'still here'").fetchone() == ("still here",)
    w = Wire(proxy.port)
    try:
        w.startup(user="postgres", database="postgres")
        w.send(codec.parse("show plugin_rows", name="s") + codec.bind([], portal="p", statement="s")
               + codec.describe_portal("p") + codec.execute("p", max_rows=2) + codec.execute("p", max_rows=2)
               + codec.SYNC)
        msgs = w.until_ready()
        assert [t for t, _ in msgs] == [b"1", b"2", b"T", b"D", b"D", b"s", b"D", b"C", b"Z"]
        assert [codec.parse_data_row(b) for t, b in msgs if t == b"D"] == [[b"1"], [b"2"], [b"3"]]
    finally:
        w.close()


def test_lifecycle_hooks_and_admin_routes(plugin_proxy, tmp_path):
    notes = tmp_path / "notes.txt"
    proxy = plugin_proxy({"modules": ["tests.plugins.lifecycle"],
                          "tests.plugins.lifecycle": {"path": str(notes)}})
    proxy.query("select 1")
    assert proxy.api("GET", "/hello") == (200, {"hello": "from a plugin"})
    assert proxy.api("POST", "/primary/clear")[0] == 200  # the operator clears the primary, and sets it again
    assert proxy.api("POST", "/primary", {"node": "primary"})[0] == 200
    proxy.stop()
    lines = notes.read_text().split("\n")
    assert lines[0] == "startup" and "connect postgres" in lines and "disconnect postgres" in lines
    assert lines.count("topology PrimaryChanged") >= 3, lines  # (cleared, pending, confirmed)
    assert lines[-2] == "shutdown"


@needs_examples
def test_audit_log_has_the_right_rows(plugin_proxy, tmp_path):
    path = tmp_path / "audit.jsonl"
    proxy = plugin_proxy({"audit_log": {"path": str(path)}, "wasm_dir": str(tmp_path / "wasm")})
    (tmp_path / "wasm").mkdir(exist_ok=True)
    proxy.query("select generate_series(1, 3)")
    with pytest.raises(psycopg2.Error):
        proxy.query("select * from no_such_table")
    with pytest.raises(psycopg2.Error):
        proxy.query("delete from guarded_nothing")  # refused by the guard: logged with its SQLSTATE
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(path.read_text().splitlines()) < 3:
        time.sleep(0.05)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by_sql = {r["sql"]: r for r in rows}
    ok = by_sql["select generate_series(1, 3)"]
    assert ok["rows"] == 3 and ok["user"] == "postgres" and ok["node"] == "primary" and ok["error"] is None
    assert ok["seconds"] > 0 and ok["client"] == "127.0.0.1"
    assert by_sql["select * from no_such_table"]["error"] == "42P01"
    refused = by_sql["delete from guarded_nothing"]
    assert refused["error"] == "P0001" and refused["tags"]["query_guard"].startswith("refused")


def copy_wat(src, folder, name):
    target = os.path.join(folder, name)
    shutil.copy(src, target + ".tmp")
    os.replace(target + ".tmp", target)  # atomic: the host never sees half a file


@needs_examples
def test_wasm_block_pattern_and_tags(plugin_proxy, tmp_path):
    wasm = tmp_path / "wasm"
    wasm.mkdir()
    copy_wat(os.path.join(EXAMPLES, "block_pattern.wat"), wasm, "block_pattern.wat")
    copy_wat(os.path.join(EXAMPLES, "tag_queries.wat"), wasm, "tag_queries.wat")
    audit = tmp_path / "audit.jsonl"
    proxy = plugin_proxy({"wasm_dir": str(wasm), "wasm:block_pattern": {"pattern": "forbidden_fn"},
                          "query_guard": {"enabled": False}, "audit_log": {"path": str(audit)}})
    with pytest.raises(psycopg2.Error) as info:
        proxy.query("select forbidden_fn()")
    assert info.value.pgcode == "42501" and "blocked by the block_pattern WASM plugin" in str(info.value)
    assert proxy.query("select pg_sleep(0)") == [("",)]  # the default pattern is replaced by the config
    deadline = time.monotonic() + 5  # tag_queries tagged it (the audit log writes the tags)
    while time.monotonic() < deadline and "pg_sleep(0)" not in (audit.read_text() if audit.exists() else ""):
        time.sleep(0.05)
    tagged = [json.loads(line) for line in audit.read_text().splitlines() if "pg_sleep(0)" in line]
    assert tagged and tagged[0]["tags"].get("wasm") == "seen", tagged
    listing = subprocess.run([HELIOS, "plugins", "-c", proxy.config_path], capture_output=True, text=True,
                             timeout=60, env={**os.environ, **ENV})
    assert "wasm:block_pattern: wasm " in listing.stdout and "wasm:tag_queries" in listing.stdout


def test_wasm_sandbox_fuel_memory_corruption_and_hot_reload(plugin_proxy, tmp_path):
    wasm = tmp_path / "wasm"
    wasm.mkdir()
    copy_wat(os.path.join(HERE, "loop.wat"), wasm, "loop.wat")
    copy_wat(os.path.join(HERE, "grab.wat"), wasm, "grab.wat")
    copy_wat(os.path.join(EXAMPLES, "tag_queries.wat"), wasm, "live.wat")
    proxy = plugin_proxy({"wasm_dir": str(wasm), "wasm_memory_mb": 8, "wasm_reload_interval": 0.2,
                          "wasm:loop": {"policy": "fail-closed"}, "wasm:live": {"pattern": "marker"},
                          "query_guard": {"enabled": False}, "audit_log": {"enabled": False}})
    with pytest.raises(psycopg2.Error) as info:  # out of fuel: this query only
        proxy.query("select 1")
    assert info.value.pgcode == "XX000" and "wasm:loop" in str(info.value)
    assert "wasm:grab failed" in proxy.output() and "wasm trap" in proxy.output()
    os.remove(wasm / "loop.wat")  # unloaded within the reload interval
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if proxy.query("select 1") == [(1,)]:
                break
        except psycopg2.Error:
            time.sleep(0.1)
    assert proxy.query("select 'marker'") == [("marker",)]
    # replace live.wat while queries run: new behaviour within a second, no failed query
    with Probe(proxy.connect) as probe:
        copy_wat(os.path.join(EXAMPLES, "block_pattern.wat"), wasm, "live.wat")
        swapped = time.monotonic()
        blocked = None
        while time.monotonic() - swapped < 5:
            try:
                proxy.query("select 'marker'")
            except psycopg2.Error:
                blocked = time.monotonic() - swapped
                break
            time.sleep(0.02)
        assert blocked is not None and blocked < 1.0
        # a corrupt file: a clear error, the old version keeps serving
        with open(wasm / "live.wat.tmp", "w") as f:
            f.write("(module (this is not wat")
        os.replace(wasm / "live.wat.tmp", wasm / "live.wat")
        time.sleep(0.6)
        with pytest.raises(psycopg2.Error):
            proxy.query("select 'marker'")
    assert not probe.errors and probe.times, probe.errors[:3]
    assert "wasm plugin wasm:live: " in proxy.output() and "does not load" in proxy.output()
    assert "the previous version keeps serving" in proxy.output()


def test_every_hook_is_documented():
    from helios_proxy.plugins import hookspecs
    doc = open(os.path.join(ROOT, "plugins", "README.md")).read()
    import pluggy
    manager = pluggy.PluginManager("helios_proxy")
    manager.add_hookspecs(hookspecs)
    hooks = [name for name in dir(manager.hook) if not name.startswith("_")]  # every hookspec, by pluggy
    assert len(hooks) >= 10 and "rewrite_rules" in hooks
    missing = [h for h in hooks if f"`{h}(" not in doc]
    assert not missing, f"hooks missing from plugins/README.md: {missing}"
    for name in hooks:
        assert getattr(hookspecs, name).__doc__, name


def test_bad_plugin_settings_are_clear_config_errors(tmp_path, cluster):
    from .fix_proxy import ProxyProcess
    for plugins, message in (({"bogus": 1}, "plugins.bogus: unknown setting"),
                             ({"query_guard": {"policy": "maybe"}}, "plugins.query_guard.policy"),
                             ({"budget_ms": "x"}, "plugins.budget_ms: wrong type")):
        p = ProxyProcess(str(tmp_path), cluster, plugins=plugins)
        p.write_config()
        out = subprocess.run([HELIOS, "run", "-c", p.config_path], capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def tutorial_files():
    """The tutorial's files exactly as plugins/README.md shows them: {file name: code}."""
    with open(os.path.join(ROOT, "plugins", "README.md")) as f:
        text = f.read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    files = {}
    for block in blocks:
        lines = [line[3:] if line.startswith("   ") else line for line in block.splitlines()]
        first = lines[0].strip()
        if first.startswith("# ") and first.endswith(".py"):
            files[first[2:]] = "\n".join(lines) + "\n"
    return files


def test_the_tutorial_plugin_works_as_written(tmp_path):
    files = tutorial_files()
    assert set(files) >= {"my_plugin.py", "setup.py"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    done = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "my-plugin", done.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        import my_plugin
        from helios_proxy.pipeline import QueryContext
        refused = {sql: my_plugin.on_query_start(QueryContext(None, sql)) is not None for sql in (
            "drop table t", "DROP  TABLE t", "drop /* hidden */ table if exists a, b", "select 1; drop table t",
            "select 'drop table t'", "drop view v", "select 1", "drop tabel oops")}
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_plugin", None)
    assert refused == {"drop table t": True, "DROP  TABLE t": True, "drop /* hidden */ table if exists a, b": True,
                       "select 1; drop table t": True, "select 'drop table t'": False, "drop view v": False,
                       "select 1": False, "drop tabel oops": False}


def test_a_wasm_plugins_on_query_complete_runs_once_per_answer(plugin_proxy, tmp_path):
    wasm = tmp_path / "wasm"
    wasm.mkdir()
    copy_wat(os.path.join(HERE, "complete.wat"), wasm, "complete.wat")
    proxy = plugin_proxy({"wasm_dir": str(wasm), "query_guard": {"enabled": False},
                          "audit_log": {"enabled": False}})
    for i in range(3):
        proxy.query(f"select {i}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and proxy.output().count("query completed after some microseconds") < 3:
        time.sleep(0.05)
    assert proxy.output().count("query completed after some microseconds") >= 3


@needs_examples
def test_an_installed_plugin_adds_a_command_to_the_cli():
    def run(*args):
        return subprocess.run([HELIOS, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **ENV})
    refused = run("query-guard-check", "delete from t")
    assert refused.returncode == 1 and refused.stdout.strip() == "refused: DELETE without WHERE", refused
    allowed = run("query-guard-check", "delete from t where id = 1")
    assert allowed.returncode == 0 and allowed.stdout.strip() == "allowed"
    assert "query-guard-check" in run("--help").stdout
