"""Configuration: validation names the key and the value, env overrides, check-config, generated docs."""
import os
import subprocess
import sys

import pytest

from helios_proxy.config import load
from helios_proxy.config.docs import render, render_example
from helios_proxy.config.schema import SETTINGS
from helios_proxy.errors import ConfigError
from helios_proxy.frontend.userlist import parse_userlist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = {"name": "p", "host": "127.0.0.1", "port": 5432, "role": "primary"}


def cfg(**sections):
    data = {"nodes": [NODE], **sections}
    return load(data, environ={})


def test_defaults_and_required_keys():
    c = cfg()
    assert c.server.listen == "127.0.0.1:6432" and c.pool.mode == "session" and c.auth.method == "trust"
    assert c.nodes[0].weight == 1


@pytest.mark.parametrize("sections, message", [
    ({"server": {"listen": 12}}, "server.listen: expected str, got 12"),
    ({"server": {"listen": "nohost"}}, "server.listen: 'nohost'"),
    ({"server": {"max_client_conn": 0}}, "server.max_client_conn: 0 is below the minimum"),
    ({"server": {"max_client_conn": True}}, "server.max_client_conn: expected int"),
    ({"pool": {"mode": "weird"}}, "pool.mode: 'weird' is not one of"),
    ({"pool": {"bogus": 1}}, "pool.bogus: unknown setting"),
    ({"bogus": {}}, "unknown section [bogus]"),
    ({"auth": {"method": "md5"}}, "auth.method: 'md5' needs auth.users_file"),
    ({"auth": {"users_file": "/nonexistent"}}, "auth.users_file: '/nonexistent': no such file"),
    ({"pool": {"min_size": 5, "max_size": 2}}, "pool.min_size"),
    ({"databases": {"app": {"min_size": 30}}}, "databases.app.min_size: 30 is above max_size 20"),
    ({"databases": {"app": {"mode": "x"}}}, "databases.app.mode: 'x' is not one of"),
    ({"databases": {"app": {"port": 5433}}}, "databases.app.port: needs databases.app.host"),
    ({"server": {"unix_socket_dir": "/nonexistent"}}, "server.unix_socket_dir: '/nonexistent': no such directory"),
    ({"server": {"unix_socket_mode": "777x"}}, "server.unix_socket_mode: '777x': expected an octal mode"),
    ({"users": {"bob": {"bogus": 1}}}, "users.bob.bogus: unknown setting"),
    ({"tls": {"client_mode": "require"}}, "tls.client_mode"),
    ({"topology": {"provider": "patroni"}}, "topology.patroni_url: required"),
    ({"failover": {"mode": "command"}}, "failover.promote_command: required"),
    ({"failover": {"mode": "sometimes"}}, "failover.mode: 'sometimes' is not one of"),
    ({"admin": {"listen": "0.0.0.0:9090"}}, "admin.listen: '0.0.0.0:9090' is beyond loopback"),
    ({"cache": {"enabled": True}, "server": {"workers": 2}}, "cache.redis_url: required with cache.enabled"),
    ({"cache": {"invalidation": "sometimes"}}, "cache.invalidation: 'sometimes' is not one of"),
    ({"cache": {"rules": [{"ttl_s": 5}]}}, "cache.rules[0].table: required"),
    ({"cache": {"rules": [{"table": "t", "tll_s": 5}]}}, "cache.rules[0].tll_s: unknown setting"),
    ({"cache": {"rules": {"table": "t"}}}, "cache.rules: expected [[cache.rules]] tables"),
    ({"pool": {"max_szie": 5}}, 'pool.max_szie: unknown setting (did you mean "max_size"?)'),
    ({"tenancy": {"identfy": "database"}}, 'did you mean "identify"?'),
    ({"topolgy": {}}, 'unknown section [topolgy] (did you mean "topology"?)'),
    ({"topology": {"provider": "patroni", "patroni_url": "http://127.0.0.1:8008"}, "failover": {"mode": "promote"}},
     "makes two deciders of one failover"),
    ({"topology": {"provider": "standalone"}, "failover": {"mode": "command", "promote_command": "true"}},
     "makes two deciders of one failover"),
])
def test_errors_name_the_key_and_value(sections, message):
    with pytest.raises(ConfigError) as info:
        cfg(**sections)
    assert message in str(info.value)


def test_a_nodes_role_takes_patronis_words_and_a_wrong_one_is_the_only_problem_told():
    nodes = [NODE, {**NODE, "name": "s1", "role": "replica"}, {**NODE, "name": "s2", "role": "Leader"}]
    with pytest.raises(ConfigError) as info:  # (two primaries: p and s2 = leader)
        load({"nodes": nodes}, environ={})
    assert "'p', 's2' all have role" in str(info.value)
    c = load({"nodes": nodes[:2]}, environ={})
    assert [n.role for n in c.nodes] == ["primary", "standby"]
    with pytest.raises(ConfigError) as info:
        load({"nodes": [NODE, {**NODE, "name": "s1", "role": "stanby"}]}, environ={})
    text = str(info.value)
    assert "nodes[1].role: 'stanby' is not one of primary, standby" in text and "all have role" not in text


def test_nodes_are_checked():
    with pytest.raises(ConfigError, match="at least one"):
        load({}, environ={})
    with pytest.raises(ConfigError, match=r"nodes\[1\].name: 'p' is used twice"):
        load({"nodes": [NODE, NODE]}, environ={})
    with pytest.raises(ConfigError, match=r"nodes\[0\].port: 70000 is above"):
        load({"nodes": [{**NODE, "port": 70000}]}, environ={})


def test_environment_overrides_by_type():
    c = load({"nodes": [NODE]}, environ={"HELIOS_POOL__MAX_SIZE": "50", "HELIOS_LOG__CONNECTIONS": "off",
                                          "HELIOS_SERVER__CLIENT_IDLE_TIMEOUT": "2.5"})
    assert (c.pool.max_size, c.log.connections, c.server.client_idle_timeout) == (50, False, 2.5)
    with pytest.raises(ConfigError, match="HELIOS_POOL__MAX_SIZE"):
        load({"nodes": [NODE]}, environ={"HELIOS_POOL__MAX_SIZE": "many"})


def test_secrets_are_redacted():
    c = load({"nodes": [NODE], "admin": {"token": "s3cret"},
              "cache": {"redis_url": "redis://:pw-s3cret@127.0.0.1:6379/0"}}, environ={})
    assert "s3cret" not in repr(c.redacted())


def test_check_config_cli(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[[nodes]]\nname = "p"\nport = 5432\n')
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten = 12\n")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    run = [sys.executable, "-m", "helios_proxy", "check-config", "-c"]
    assert subprocess.run(run + [str(good)], capture_output=True).returncode == 0
    out = subprocess.run(run + [str(bad)], capture_output=True, text=True)
    assert out.returncode == 1 and "server.listen" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(run + [str(broken)], capture_output=True, text=True)
    assert out.returncode == 1 and "invalid TOML" in out.stderr


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(ROOT, "etc")) if n.endswith(".toml")))
def test_example_configs_are_valid(name):
    out = subprocess.run([sys.executable, "-m", "helios_proxy", "check-config", "-c",
                          os.path.join(ROOT, "etc", name)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_full_example_is_current_and_mentions_every_setting():
    text = open(os.path.join(ROOT, "etc", "helios-proxy.toml")).read()
    assert text == render_example(), "run: python -m helios_proxy.config.docs example > etc/helios-proxy.toml"
    assert not [s.path for s in SETTINGS if f"\n{s.key} = " not in text]


def test_configuration_docs_are_current():
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        assert f.read() == render(), "run: python -m helios_proxy.config.docs > docs/configuration.md"


def test_userlist_format():
    users = parse_userlist('"alice" "pw"\n; comment\n"bo""b" "md5abc"\n\n"c" "SCRAM-SHA-256$1:a$b:c"\n')
    assert users == {"alice": "pw", 'bo"b': "md5abc", "c": "SCRAM-SHA-256$1:a$b:c"}
    with pytest.raises(ConfigError, match=":1:"):
        parse_userlist('"alice" pw\n')


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as raised:
        load({"server": {"listen": "*:6432", "max_client_conn": 0}, "pool": {"mode": "bogus", "nope": 1},
              "nodes": [{"name": "a", "port": 1}, {"name": "b", "port": 2}], "bogus": {}},
             environ={"HELIOS_POOL__MAXSIZE": "3", "HELIOS_TEST_OTHER": "not ours"})
    text = str(raised.value)
    for expected in ("unknown section [bogus]", "server.listen: '*:6432'", "server.max_client_conn: 0",
                     "pool.nope: unknown setting", "pool.mode: 'bogus'", "HELIOS_POOL__MAXSIZE: no such setting",
                     "'a', 'b' all have role = \"primary\""):
        assert expected in text, text
    assert text.startswith("7 configuration errors") and "HELIOS_TEST_OTHER" not in text


def test_check_config_fails_like_run(tmp_path):
    import subprocess
    import sys
    helios = os.path.join(os.path.dirname(sys.executable), "helios-proxy")
    cases = {"star": '[server]\nlisten = "*:6432"\n[[nodes]]\nname = "p"\nport = 5432\n',
             "plugin table": '[plugins.no_such_plugin]\nanswer = 42\n[[nodes]]\nname = "p"\nport = 5432\n'}
    for name, text in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.toml"
        path.write_text(text)
        for command in (["check-config", "-c", str(path)], ["run", "-c", str(path)]):
            done = subprocess.run([helios, *command], capture_output=True, text=True, timeout=60)
            assert done.returncode != 0, (command, done.stdout)
            assert ("server.listen" if name == "star" else "plugins.no_such_plugin") in done.stderr, done.stderr


def test_every_plugins_key_is_documented():
    from helios_proxy.plugins.manager import GLOBAL_DOCS, GLOBAL_KEYS, MANAGER_KEYS, TABLE_DOCS
    assert {k for k, _, _ in GLOBAL_DOCS} == set(GLOBAL_KEYS)
    assert {k for k, _, _ in TABLE_DOCS} == set(MANAGER_KEYS)
    assert "## [plugins]" in render() and "\n[plugins]\n" in render_example()
