"""`transcache install` / `uninstall` / `env` / `status` in a redirected home: what install
writes, that a second install changes nothing, that `--dry-run` changes nothing, that every
shell sees the variables, and that uninstall leaves the user's files byte-identical."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transcache._launch import client_environment
from transcache.install.apply import apply, undo
from transcache.install.blocks import BEGIN_MARKER, END_MARKER, render_block
from transcache.install.manifest import Manifest
from transcache.install.plan import EditBlock
from transcache.install.runner import RecordingRunner

from .installhome import Home, make_home, snapshot

# A Debian-like home: skeleton files, one without a final newline, one with CRLF line ends
# (only a file no test shell reads: bash and zsh reject CR in code).
STARTUP_FILES = (
    (".bashrc", b"# ~/.bashrc\ncase $- in *i*) ;; *) return;; esac\nalias ll='ls -l'"),
    (".profile", b'# ~/.profile\nif [ -n "$BASH_VERSION" ]; then . "$HOME/.bashrc"; fi\n'),
    (".zshrc", b"setopt autocd\r\nbindkey -e"),
)
SHELL_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "SSL_CERT_FILE")


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path, STARTUP_FILES)


def expected_env(home: Home, port: int = 8797) -> dict[str, str]:
    ca_dir = home.data_dir / "ca"
    return client_environment(f"http://127.0.0.1:{port}", ca_dir / "bundle.pem", ca_dir / "ca.pem")


def test_install_writes_env_files_unit_and_blocks_and_records_them(home: Home) -> None:
    result = home.transcache("install")
    assert "no systemd user manager runs here" in result.stderr
    env_sh = (home.data_dir / "env.sh").read_text()
    for name, value in expected_env(home).items():
        assert f"export {name}={value}\n" in env_sh
    assert "PIP_PROXY" not in env_sh
    assert (home.config_dir / "fish" / "conf.d" / "transcache.fish").is_file()
    assert (home.config_dir / "environment.d" / "60-transcache.conf").is_file()
    unit = home.config_dir / "systemd" / "user" / "transcache.service"
    assert "Type=notify" in unit.read_text()
    link = home.config_dir / "systemd" / "user" / "default.target.wants" / "transcache.service"
    assert link.is_symlink()
    for name in (".bashrc", ".profile", ".zshrc", ".zshenv"):
        text = (home.path / name).read_text()
        assert BEGIN_MARKER in text and END_MARKER in text, name
    bundle = (home.data_dir / "ca" / "bundle.pem").read_bytes()
    assert bundle.endswith((home.data_dir / "ca" / "ca.pem").read_bytes())

    manifest = json.loads((home.data_dir / "install.json").read_text())
    files = {e["path"]: e["sha256"] for e in manifest["entries"] if e["kind"] == "file"}
    assert str(unit) in files and str(home.data_dir / "env.sh") in files
    blocks = {e["path"] for e in manifest["entries"] if e["kind"] == "block"}
    assert str(home.path / ".bashrc") in blocks
    commands = [e["run"] for e in manifest["entries"] if e["kind"] == "commands"]
    assert commands == [[["systemctl", "--user", "enable", "transcache.service"]]]


def test_second_install_changes_nothing(home: Home) -> None:
    home.transcache("install")
    before = snapshot(home.path)
    second = home.transcache("install")
    assert "nothing changed" in second.stdout
    assert snapshot(home.path) == before


def test_dry_run_prints_diffs_and_commands_and_changes_nothing(home: Home) -> None:
    before = snapshot(home.root)
    result = home.transcache("install", "--dry-run", "--socket-activation")
    assert snapshot(home.root) == before
    assert f"create {home.config_dir / 'systemd' / 'user' / 'transcache.socket'}" in result.stdout
    assert f"+++ {home.path / '.bashrc'}" in result.stdout
    assert f"+{BEGIN_MARKER}" in result.stdout
    assert "$ systemctl --user enable transcache.socket" in result.stdout
    assert "create the CA in" in result.stdout


def test_uninstall_leaves_startup_files_byte_identical(home: Home) -> None:
    before = snapshot(home.path)
    home.transcache("install", "--no-proxy", "corp.example")
    assert snapshot(home.path) != before
    result = home.transcache("uninstall")
    assert "restored" in result.stdout
    after = snapshot(home.path)
    # Only the CA (and the bundle next to it) stays, with the directories holding it;
    # --purge removes it too.
    ca = ".local/share/transcache/ca"
    holding = {".local", ".local/share", ".local/share/transcache", ca}
    kept = {k for k in after if k not in holding and not k.startswith(f"{ca}/")}
    assert {k: after[k] for k in kept} == before
    assert not (home.config_dir).exists()


def test_uninstall_keeps_a_file_edited_after_install_and_says_so(home: Home) -> None:
    home.transcache("install")
    env_sh = home.data_dir / "env.sh"
    env_sh.write_text(env_sh.read_text() + "export MINE=1\n")
    result = home.transcache("uninstall")
    assert f"kept {env_sh}: it was changed after install" in result.stderr
    assert "MINE=1" in env_sh.read_text()


def test_uninstall_dry_run_lists_what_uninstall_undoes_and_changes_nothing(home: Home) -> None:
    home.transcache("install")
    cache = home.path / ".cache" / "transcache"
    cache.mkdir(parents=True)
    before = snapshot(home.path)
    dry = home.transcache("uninstall", "--dry-run", "--purge").stdout
    assert snapshot(home.path) == before
    unit = home.config_dir / "systemd" / "user" / "transcache.service"
    assert f"remove transcache's file from {unit}" in dry
    assert f"remove transcache's block from {home.path / '.bashrc'}" in dry
    assert "  $ systemctl --user disable transcache.service" in dry
    assert f"remove {home.data_dir / 'ca'}\n" in dry
    assert f"remove {cache}\n" in dry
    home.transcache("uninstall", "--purge")
    assert home.transcache("uninstall", "--dry-run").stdout == "nothing to uninstall\n"


def test_purge_removes_the_ca_and_the_cache(home: Home) -> None:
    home.transcache("install")
    cache = home.path / ".cache" / "transcache"
    cache.mkdir(parents=True)
    home.transcache("uninstall", "--purge")
    assert not (home.data_dir / "ca").exists()
    assert not cache.exists()


@pytest.mark.parametrize(
    "shell",
    [
        ["bash", "-lc"],
        ["bash", "-ic"],
        ["zsh", "-c"],
        ["fish", "-c"],
    ],
    ids=["bash-login", "bash-interactive", "zsh", "fish"],
)
def test_new_shells_see_both_cases_of_the_variables(home: Home, shell: list[str]) -> None:
    home.transcache("install")
    printed = "; ".join(f"echo {name}=${name}" for name in SHELL_VARIABLES)
    result = subprocess.run(
        [*shell, printed],
        env=home.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = expected_env(home)
    for name in SHELL_VARIABLES:
        assert f"{name}={expected[name]}\n" in result.stdout, (shell, result.stdout, result.stderr)


def test_env_prints_the_variables_for_sh_fish_and_json(home: Home) -> None:
    expected = expected_env(home)
    as_json = json.loads(home.transcache("env", "--shell", "json").stdout)
    assert as_json == expected
    sh = home.transcache("env").stdout
    evaluated = subprocess.run(
        ["sh", "-c", f'{sh}\necho "$HTTPS_PROXY $GIT_SSL_CAINFO"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert evaluated.stdout == f"{expected['HTTPS_PROXY']} {expected['GIT_SSL_CAINFO']}\n"
    fish = home.transcache("env", "--shell", "fish").stdout
    assert f"set -gx NODE_EXTRA_CA_CERTS '{expected['NODE_EXTRA_CA_CERTS']}'\n" in fish


def test_env_follows_the_installed_address(home: Home) -> None:
    home.transcache("install", "--listen", "127.0.0.1:9911", "--no-proxy", "corp.example")
    env = json.loads(home.transcache("env", "--shell", "json").stdout)
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:9911"
    assert env["no_proxy"] == "localhost,127.0.0.1,::1,corp.example"


def test_status_json_reports_service_ca_and_missing_variables(home: Home) -> None:
    home.transcache("install")
    status = json.loads(home.transcache("status", "--json", check=False).stdout)
    assert status["installed"] and status["service_file"] and status["enabled"]
    assert status["answering"] is False
    assert status["ca_expires"].startswith("20")
    assert status["bundle_age_seconds"] >= 0
    assert "https_proxy" in status["missing_variables"]
    text = home.transcache("status", check=False).stdout
    assert "installed      yes\n" in text
    assert "service        file present, enabled\n" in text
    assert "proxy          http://127.0.0.1:8797 not answering\n" in text
    assert "logs           journalctl --user -u transcache.service\n" in text
    assert re.search(r"\(written (just now|1 second ago|\d+ seconds ago)\)\n", text), text
    shell_env = home.env(expected_env(home))
    missing = home.transcache("status", "--json", env=shell_env, check=False).stdout
    assert json.loads(missing)["missing_variables"] == []


def test_status_exits_non_zero_and_says_how_to_start_an_installed_service_that_is_down(
    home: Home,
) -> None:
    home.transcache("install")
    for args in (["status"], ["status", "--json"]):
        result = home.transcache(*args, check=False)
        assert result.returncode == 3, result
    assert "start it with `systemctl --user start transcache.service`" in result.stderr


def test_status_after_uninstall_names_no_logs_and_exits_0(home: Home) -> None:
    home.transcache("install")
    home.transcache("uninstall")
    result = home.transcache("status")
    assert "installed      no\n" in result.stdout
    assert "journalctl" not in result.stdout and "logs" not in result.stdout
    assert json.loads(home.transcache("status", "--json").stdout)["logs"] == ""


# -- the property: install + uninstall is the identity on any startup file ----------------

LINES = st.sampled_from(
    ["", "export PATH=$HOME/bin:$PATH", "# comment", "alias ll='ls -l'", "\t x", "é ü", "\\"]
)
ENDINGS = st.sampled_from(["\n", "\r\n"])
OLD_BLOCK = render_block("export HTTPS_PROXY=http://old.example:3128")


@st.composite
def startup_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.tuples(LINES, ENDINGS), max_size=6))
    text = "".join(line + ending for line, ending in lines)
    if draw(st.booleans()):
        at = draw(st.integers(0, len(lines)))
        head = "".join(line + ending for line, ending in lines[:at])
        text = head + OLD_BLOCK.replace("\n", draw(ENDINGS)) + text[len(head) :]
    if text and draw(st.booleans()):
        text = text.rstrip("\r\n")  # no final newline
    return text.encode() + draw(st.sampled_from([b"", b"\xff\xfe"]))


@settings(max_examples=200, deadline=None)
@given(content=startup_files())
def test_install_then_uninstall_is_the_identity_on_startup_files(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    directory = tmp_path_factory.mktemp("startup")
    path = directory / ".bashrc"
    path.write_bytes(content)
    manifest = Manifest()
    step = EditBlock(path, render_block(". /somewhere/env.sh"))
    apply([step], manifest, RecordingRunner(), directory / "manifest.json")
    installed = path.read_bytes()
    assert b". /somewhere/env.sh" in installed
    # A second install changes nothing, and reuses the first install's record.
    apply([step], manifest, RecordingRunner(), directory / "manifest.json")
    assert path.read_bytes() == installed
    undo(manifest, RecordingRunner())
    assert path.read_bytes() == content


def test_block_created_in_a_new_file_is_deleted_with_it(tmp_path: Path) -> None:
    path = tmp_path / ".zshenv"
    manifest = Manifest()
    apply(
        [EditBlock(path, render_block(". x"), create=True)],
        manifest,
        RecordingRunner(),
        tmp_path / "m.json",
    )
    assert path.read_text() == render_block(". x")
    undo(manifest, RecordingRunner())
    assert not path.exists()
