"""`transcache doctor`'s check of client settings that win over the variables: in a temporary
HOME, each of git, npm, pip, cargo and apt configured with its own proxy or CA file is found,
with its fix; the same settings naming our proxy or a file holding our CA are not; nor are
settings a variable we set wins over."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from transcache.install import overrides
from transcache.install.overrides import Concern, Setting, Source

PROXY = "http://127.0.0.1:8797"
OTHER_PROXY = "http://proxy.corp.test:3128"
CA_PEM = b"-----BEGIN CERTIFICATE-----\nOURS\n-----END CERTIFICATE-----\n"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """An environment whose HOME and apt configuration are under tmp_path, nothing set."""
    home = tmp_path / "home"
    home.mkdir()
    parts = tmp_path / "apt.conf.d"
    parts.mkdir()
    apt_conf = tmp_path / "apt.conf"
    apt_conf.write_text(f'Dir::Etc::main "{tmp_path}/none";\nDir::Etc::parts "{parts}";\n')
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "APT_CONFIG": str(apt_conf),
    }


def configure(env: dict[str, str], proxy: str, cafile: Path) -> None:
    """Every client of the table given `proxy` and `cafile` in its own configuration."""
    home = Path(env["HOME"])
    for key, value in (("http.proxy", proxy), ("http.sslCAInfo", str(cafile))):
        subprocess.run(["git", "config", "--global", key, value], env=env, check=True)
    (home / ".npmrc").write_text(f"proxy={proxy}\nhttps-proxy={proxy}\ncafile={cafile}\n")
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text(
        f"[global]\nproxy = {proxy}\ncert = {cafile}\n"
    )
    (home / ".cargo").mkdir()
    (home / ".cargo" / "config.toml").write_text(
        f'[http]\nproxy = "{proxy}"\ncainfo = "{cafile}"\n'
    )
    parts = Path(env["APT_CONFIG"]).parent / "apt.conf.d"
    (parts / "50proxy").write_text(
        f'Acquire::http::Proxy "{proxy}";\nAcquire::https::CAInfo "{cafile}";\n'
    )


def conflicts(env: dict[str, str]) -> dict[tuple[str, str], str]:
    home = Path(env["HOME"])
    settings = overrides.read(env, home, overrides.SystemFiles((), ()))
    found = overrides.find(settings, env, PROXY, CA_PEM, "BUNDLE")
    return {
        (c.client, c.message.split(" sets ")[1].split("=")[0].lower()): c.message for c in found
    }


def test_each_clients_own_proxy_and_ca_settings_are_found_with_their_fix(
    files: dict[str, str], tmp_path: Path
) -> None:
    cafile = tmp_path / "corporate.pem"
    cafile.write_text("-----BEGIN CERTIFICATE-----\nTHEIRS\n-----END CERTIFICATE-----\n")
    configure(files, OTHER_PROXY, cafile)
    found = conflicts(files)
    assert set(found) == {
        ("git", "http.proxy"),
        ("git", "http.sslcainfo"),
        ("npm", "proxy"),
        ("npm", "https-proxy"),
        ("npm", "cafile"),
        ("pip", "proxy"),
        ("pip", "cert"),
        ("cargo", "http.proxy"),
        ("cargo", "http.cainfo"),
        ("apt", "acquire::http::proxy"),
        ("apt", "acquire::https::cainfo"),
    }
    home = files["HOME"]
    assert found["git", "http.proxy"].endswith(
        f"run `git config --file {home}/.gitconfig --unset http.proxy`"
    )
    assert "sends it past the proxy" in found["npm", "proxy"]
    assert found["npm", "cafile"].endswith("`npm config set cafile BUNDLE`")
    assert "without the transcache CA" in found["pip", "cert"]
    assert f"[http] table of {home}/.cargo/config.toml" in found["cargo", "http.proxy"]
    assert "transcache install --apt" in found["apt", "acquire::http::proxy"]


def test_settings_naming_our_proxy_and_a_file_with_our_ca_are_fine(
    files: dict[str, str], tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(b"system roots\n" + CA_PEM)
    configure(files, PROXY + "/", bundle)
    assert conflicts(files) == {}


def test_a_setting_our_variable_wins_over_is_not_reported(
    files: dict[str, str], tmp_path: Path
) -> None:
    configure(files, PROXY, tmp_path / "missing.pem")
    with_variables = {
        **files,
        "GIT_SSL_CAINFO": "x",
        "REQUESTS_CA_BUNDLE": "x",
        "CARGO_HTTP_CAINFO": "x",
    }
    assert set(conflicts(with_variables)) == {("npm", "cafile"), ("apt", "acquire::https::cainfo")}


def test_variables_that_act_as_settings_count_and_the_last_value_wins(
    files: dict[str, str],
) -> None:
    Path(files["HOME"], ".npmrc").write_text(f"proxy={OTHER_PROXY}\n")
    files["npm_config_proxy"] = PROXY  # npm's environment wins over its files
    files["PIP_PROXY"] = OTHER_PROXY
    assert set(conflicts(files)) == {("pip", "proxy")}
    assert "the PIP_PROXY variable sets proxy=" in conflicts(files)["pip", "proxy"]


@pytest.mark.parametrize(
    ("value", "ours"),
    [
        (PROXY, True),
        ("127.0.0.1:8797", True),
        ("http://user:pw@127.0.0.1:8797/", True),
        ("http://127.0.0.1:8798", False),
        ("DIRECT", False),
        ("http://127.0.0.1:notaport", False),
    ],
)
def test_names_proxy(value: str, ours: bool) -> None:
    assert overrides.names_proxy(value, PROXY) is ours


def test_every_row_of_the_table_has_a_fix_and_a_pattern_matching_its_own_key() -> None:
    keys = {
        Source.GIT: "http.proxy",
        Source.NPMRC: "proxy",
        Source.PIP_CONF: "proxy",
        Source.CARGO: "http.proxy",
        Source.APT: "Acquire::http::Proxy",
    }
    for row in overrides.OVERRIDES:
        assert row.fix
        if row.concern is Concern.PROXY:
            assert row.matches(row.source, keys[row.source]), row


def test_git_output_is_parsed_with_origins() -> None:
    output = "file:/h/.gitconfig\0http.proxy\nhttp://p:1\0file:/h/.gitconfig\0http.x.y\na b\0"
    assert overrides.parse_git(output) == [
        Setting("http.proxy", "http://p:1", "/h/.gitconfig"),
        Setting("http.x.y", "a b", "/h/.gitconfig"),
    ]
