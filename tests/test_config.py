"""The typed configuration: defaults, errors naming the key, env overrides, the CLI."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from daemon import config
from engines.config import ConfigError


def test_embedded_default_is_valid_and_round_trips():
    cfg = config.load(None, {})
    assert cfg.server.listen == "127.0.0.1:50051"
    assert cfg.server.max_receive_message_bytes == 64 * 1024 * 1024
    # The commented default file is exactly the defaults of the dataclasses.
    assert config.build(tomllib.loads(config.default_toml())) == cfg


@pytest.mark.parametrize("doc, key", [
    ({"server": {"listen": "nonsense"}}, "server.listen"),
    ({"server": {"grace_period_s": -1}}, "server.grace_period_s"),
    ({"server": {"lisen": "127.0.0.1:1"}}, "server.lisen"),
    ({"server": {"max_concurrent_rpcs": "many"}}, "server.max_concurrent_rpcs"),
    ({"telemetry": {"tracing": "zipkin"}}, "telemetry.tracing"),
    ({"security": {"tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.key"}}, "security.tls_cert"),
    ({"servr": {}}, "servr"),
    ({"coordination": {"urgent_min_p_success": 2}}, "coordination.urgent_min_p_success"),  # a probability
])
def test_errors_name_the_key(doc, key):
    with pytest.raises(ConfigError) as err:
        config.build(doc)
    assert err.value.key == key


def test_environment_overrides_typed_values():
    env = {"GALACTIC_SERVER__GRACE_PERIOD_S": "2.5", "GALACTIC_SERVER__REFLECTION": "false",
           "GALACTIC_COORDINATION__URGENT_MIN_P_SUCCESS": "0.1",
           "GALACTIC_TARGET": "ignored: a client variable, no section separator"}
    cfg = config.load(None, env)
    assert cfg.server.grace_period_s == 2.5
    assert cfg.server.reflection is False
    assert cfg.engines["coordination"].urgent_min_p_success == 0.1


def test_environment_override_with_bad_value_names_the_key():
    with pytest.raises(ConfigError) as err:
        config.load(None, {"GALACTIC_SERVER__GRACE_PERIOD_S": "soon"})
    assert err.value.key == "server.grace_period_s"


def test_config_is_frozen():
    cfg = config.load(None, {})
    with pytest.raises(AttributeError):
        cfg.server.listen = "0.0.0.0:1"  # type: ignore[misc]


def test_cli_check_exits_nonzero_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "127.0.0.1:99999"\n')
    proc = subprocess.run([sys.executable, "-m", "daemon.main", "config", "--check", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "server.listen" in proc.stderr


def test_cli_print_default_is_valid_toml(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "daemon.main", "config", "--print-default"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    out = tmp_path / "default.toml"
    out.write_text(proc.stdout)
    assert config.load(out, {}) == config.load(None, {})


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml", {})


def test_api_keys_file_without_keys_is_refused(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# no tokens yet\n\n")
    with pytest.raises(ConfigError) as err:
        config.build({"security": {"api_keys_file": str(keys)}})
    assert err.value.key == "security.api_keys_file"


def test_two_models_with_one_name_are_refused():
    with pytest.raises(ConfigError) as err:
        config.build({"llm": {"name": "same"}, "coordination": {"name": "same"}})
    assert err.value.key.endswith(".name")


@pytest.mark.parametrize("line", ["tok rps=fast", "tok burst=3", "tok concurrency=-1", "tok rps=nan"])
def test_tenant_limits_in_the_keys_file_are_checked(tmp_path, line):
    keys = tmp_path / "keys"
    keys.write_text(line + "\n")
    with pytest.raises(ConfigError) as err:
        config.build({"security": {"api_keys_file": str(keys)}})
    assert err.value.key == "security.api_keys_file"


def test_the_token_is_a_lines_first_word(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# comment\ntok-a tenant=a concurrency=2 rps=5 tokens_per_min=600\ntok-b\n")
    sec = config.build({"security": {"api_keys_file": str(keys)}}).security
    assert sec.api_keys() == {"tok-a", "tok-b"}
    name, limits = sec.tenants()["tok-a"]
    assert (name, limits.concurrency, limits.rps, limits.tokens_per_min) == ("a", 2, 5.0, 600.0)
