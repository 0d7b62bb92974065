"""`transcache install` on a machine that already reaches the internet through a proxy: the
service keeps that proxy as its parent (credentials in a 0600 file, nowhere else), `status`
shows it, and `uninstall` gives the machine its own settings back, byte for byte."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from .installhome import Home, make_home, snapshot
from .test_install import expected_env

PASSWORD = "hunter2-secret"
CORP_URL = f"http://alice:{PASSWORD}@corp.example.test:3128"
CORP_SHOWN = "http://corp.example.test:3128"
CORP_PROFILE = (
    b"# ~/.profile\n"
    b"export HTTPS_PROXY=" + CORP_URL.encode() + b"\n"
    b"export NO_PROXY=intranet.test,.corp.test\n"
)
CORP_ENVIRONMENT_D = b"HTTPS_PROXY=" + CORP_URL.encode() + b"\nNO_PROXY=intranet.test,.corp.test\n"
CORP_SHELL = {"HTTPS_PROXY": CORP_URL, "NO_PROXY": "intranet.test,.corp.test"}
CA_DIR = ".local/share/transcache/ca"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = make_home(tmp_path, [(".profile", CORP_PROFILE)])
    environment_d = home.config_dir / "environment.d"
    environment_d.mkdir(parents=True)
    (environment_d / "50-corp.conf").write_bytes(CORP_ENVIRONMENT_D)
    return home


def login_shell_proxy(home: Home) -> str:
    """HTTPS_PROXY as a new login shell of the redirected home sees it."""
    return subprocess.run(
        ["sh", "-lc", 'printf %s "$HTTPS_PROXY"'],
        env=home.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def everything_written(home: Home) -> str:
    return "".join(
        value.decode(errors="replace") if isinstance(value, bytes) else value
        for name, value in snapshot(home.root).items()
        if not name.endswith("upstream-proxy")
    )


def test_install_keeps_the_machines_proxy_as_the_parent_and_uninstall_restores_it(
    home: Home,
) -> None:
    before = snapshot(home.path)
    installed = home.transcache("install", env=home.env(CORP_SHELL))
    assert f"through {CORP_SHOWN}" in installed.stdout

    parent_file = home.data_dir / "upstream-proxy"
    assert parent_file.read_text() == CORP_URL + "\n"
    assert stat.S_IMODE(parent_file.stat().st_mode) == 0o600
    unit = (home.config_dir / "systemd" / "user" / "transcache.service").read_text()
    assert f"--upstream-proxy-file {parent_file}" in unit
    assert "--upstream-proxy-bypass intranet.test,.corp.test" in unit
    # Clients go through the service; the password is only in the 0600 file (and in the
    # user's own files, where it was before).
    assert login_shell_proxy(home) == expected_env(home)["HTTPS_PROXY"]
    # The service is installed but not running here: status says so with exit status 3.
    status_run = home.transcache("status", check=False)
    assert status_run.returncode == 3
    status_text = status_run.stdout
    assert f"upstream proxy {CORP_SHOWN}\n" in status_text
    status = json.loads(home.transcache("status", "--json", check=False).stdout)
    assert status["upstream_proxy"] == CORP_SHOWN
    assert status["upstream_proxy_bypass"] == ["intranet.test", ".corp.test"]
    written = everything_written(home).replace(CORP_PROFILE.decode(), "")
    written = written.replace(CORP_ENVIRONMENT_D.decode(), "")
    for output in (installed.stdout, installed.stderr, status_text, written):
        assert PASSWORD not in output

    # A new shell now carries the service's variables: installing again keeps the parent.
    again = home.transcache("install", env=home.env(expected_env(home)))
    assert "nothing changed" in again.stdout
    assert parent_file.read_text() == CORP_URL + "\n"

    home.transcache("uninstall")
    after = snapshot(home.path)
    kept = {k: v for k, v in after.items() if not (k == CA_DIR or k.startswith(f"{CA_DIR}/"))}
    holding = {".local", ".local/share", ".local/share/transcache"}
    assert {k: v for k, v in kept.items() if k not in holding} == before
    assert login_shell_proxy(home) == CORP_URL


def test_dry_run_names_the_credentials_file_without_showing_it(home: Home) -> None:
    result = home.transcache("install", "--dry-run", env=home.env(CORP_SHELL))
    assert f"create {home.data_dir / 'upstream-proxy'}\n  (not shown" in result.stdout
    # The password shows only as context of the user's own ~/.profile, never as ours.
    added = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert not [line for line in added if PASSWORD in line]
    assert PASSWORD not in result.stderr


def test_upstream_proxy_none_keeps_the_service_direct(home: Home) -> None:
    home.transcache("install", "--upstream-proxy", "none", env=home.env(CORP_SHELL))
    unit = (home.config_dir / "systemd" / "user" / "transcache.service").read_text()
    assert "--upstream-proxy none" in unit
    assert not (home.data_dir / "upstream-proxy").exists()
    assert "upstream proxy none (direct)\n" in home.transcache("status", check=False).stdout
