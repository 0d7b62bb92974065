"""One config builder: the command line, the Python API and the pytest plugin all turn their
options into a Config through `build_config`; options beat the config file, which beats the
defaults, and list settings add up, the options' items first."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from transcache._config import DEFAULT_PORT, Config, ConfigError, build_config
from transcache._policy import Rule, RuleAction
from transcache.api import embedded_config
from transcache.cli.run import config_from_flags


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_options_beat_the_config_file_which_beats_the_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "max_size = '1G'\nidle_timeout = 5\noffline = true\n")
    config = build_config({"max_size": 2 * 1024**2, "offline": None}, path)
    assert config.max_size == 2 * 1024**2  # the option
    assert config.idle_timeout == 5.0  # the file
    assert config.offline is True  # None: not given, so the file's
    assert config.body_timeout == Config.body_timeout  # the default


def test_list_settings_add_up_options_first(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "passthrough = ['file.test']\nconnect_ports = [8443]\n"
        "[[rule]]\nurl = '*/file/*'\nnever = true\n",
    )
    flag_rule = Rule("*/flag/*", RuleAction.IMMUTABLE)
    config = build_config(
        {"passthrough": "flag.test", "connect_ports": [9443], "rules": [flag_rule]}, path
    )
    assert config.passthrough == ("flag.test", "file.test")
    assert config.connect_ports == {8443, 9443}
    assert config.rules == (flag_rule, Rule("*/file/*", RuleAction.NEVER))


def test_values_come_in_the_forms_callers_have() -> None:
    from_strings = build_config(
        {
            "listen": "[::1]:0",
            "resolve": ["Files.test:443:127.0.0.1"],
            "ca_dir": "ca",
            "allow_destinations": "10.0.0.0/8",
        }
    )
    parsed = build_config(
        {
            "listen": ("::1", 0),
            "resolve": [(("files.test", 443), "127.0.0.1")],
            "ca_dir": Path("ca"),
            "allow_destinations": [ipaddress.ip_network("10.0.0.0/8")],
        }
    )
    mapping = build_config({"listen": "[::1]:0", "resolve": {("files.test", 443): "127.0.0.1"}})
    assert from_strings == parsed
    assert from_strings.resolve == mapping.resolve == {("files.test", 443): "127.0.0.1"}
    assert from_strings.ca_dir == Path("ca").absolute()
    assert (from_strings.listen_host, from_strings.listen_port) == ("::1", 0)


@pytest.mark.parametrize(
    "options",
    [{"listen": "nowhere"}, {"resolve": ["files.test:443"]}, {"allow_destinations": "10.0.0.0/99"}],
)
def test_bad_values_are_config_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        build_config(options)


def test_unknown_options_are_type_errors() -> None:
    with pytest.raises(TypeError, match="unknown proxy options: max_sise"):
        build_config({"max_sise": 1})


def test_the_run_flags_and_the_api_build_the_same_config(tmp_path: Path) -> None:
    no_file = str(tmp_path / "absent.toml")
    flags = ["--listen", "127.0.0.1:0", "--config", no_file, "--cache-dir", "cache"]
    flags += ["--offline", "--resolve", "files.test:443:127.0.0.1", "--immutable", "*/keep/*"]
    from_flags = config_from_flags(flags)
    from_api = embedded_config(
        {
            "cache_dir": "cache",
            "offline": True,
            "resolve": ["files.test:443:127.0.0.1"],
            "rules": [Rule("*/keep/*", RuleAction.IMMUTABLE)],
        }
    )
    assert from_flags == from_api


def test_the_api_listens_on_a_free_port_and_run_on_the_service_port(tmp_path: Path) -> None:
    assert embedded_config({}).listen_port == 0
    assert config_from_flags(["--config", str(tmp_path / "absent.toml")]).listen_port == (
        DEFAULT_PORT
    )
