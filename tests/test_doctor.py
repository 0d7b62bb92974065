"""`transcache doctor` against a running proxy: every installed client (pip, uv, git, curl,
cargo, npm) fetches from the proxy's own doctor pages and is reported OK; with one of the
variables removed, or pointing at the wrong CA file, the report names it and the fix."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from transcache.install.doctor import CLIENTS
from transcache.install.doctor_pages import doctor_wheel

from .installhome import TRANSCACHE
from .origin import client_env
from .proxyproc import ProxyProcess

DOCTOR_TIMEOUT = 600.0
RUSTUP_HOME = Path.home() / ".rustup"


@pytest.fixture
def user_env(proxy: ProxyProcess, home: Path) -> dict[str, str]:
    """What a user's shell has after `eval "$(transcache env)"`, in a redirected home."""
    env = client_env(home, proxy.env())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    if RUSTUP_HOME.is_dir():  # cargo here is rustup's proxy, which looks for its toolchains
        env["RUSTUP_HOME"] = str(RUSTUP_HOME)
    # Debian's npm sets cafile in its global npmrc, which hides NODE_EXTRA_CA_CERTS; install
    # warns and names this fix: point npm at the bundle.
    env["npm_config_cafile"] = str(proxy.bundle)
    return env


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRANSCACHE, "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DOCTOR_TIMEOUT,
        check=False,
    )


def report(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines()}


def installed_clients(env: dict[str, str]) -> list[str]:
    return [
        c.name for c in CLIENTS if any(shutil.which(e, path=env["PATH"]) for e in c.executables)
    ]


def test_doctor_reports_ok_for_each_installed_client(user_env: dict[str, str]) -> None:
    result = doctor(user_env)
    found = report(result)
    assert set(found) == set(installed_clients(user_env))
    assert {"pip", "uv", "git", "curl"} <= set(found)
    assert all(status == "OK" for status in found.values()), result.stdout
    assert result.returncode == 0


@pytest.mark.parametrize(
    ("client", "removed"), [("git", "GIT_SSL_CAINFO"), ("uv", "SSL_CERT_FILE")]
)
def test_doctor_names_the_missing_variable(
    user_env: dict[str, str], client: str, removed: str
) -> None:
    del user_env[removed]
    result = doctor(user_env)
    assert result.returncode == 1
    message = report(result)[client]
    assert message.startswith(f"FAIL: {removed} is not set")
    assert 'eval "$(transcache env)"' in message


def test_doctor_says_when_the_ca_file_lacks_the_proxys_ca(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    other.write_text("")
    user_env["GIT_SSL_CAINFO"] = str(other)
    message = report(doctor(user_env))["git"]
    assert message.startswith(f"FAIL: GIT_SSL_CAINFO ({other}) does not contain the transcache CA")


def test_doctor_says_when_nothing_answers_at_the_proxy_address(
    user_env: dict[str, str], proxy: ProxyProcess
) -> None:
    proxy.stop()
    message = report(doctor(user_env))["curl"]
    assert message.startswith(f"FAIL: nothing answers at {proxy.url}")


def test_doctor_wheel_is_a_valid_wheel() -> None:
    with zipfile.ZipFile(io.BytesIO(doctor_wheel())) as wheel:
        names = wheel.namelist()
        record = wheel.read("transcache_doctor-1.0.dist-info/RECORD").decode()
        metadata = wheel.read("transcache_doctor-1.0.dist-info/METADATA").decode()
        assert "Name: transcache-doctor\n" in metadata
        for line in record.splitlines():
            name, digest, size = line.split(",")
            assert name in names
            if digest:
                data = wheel.read(name)
                assert int(size) == len(data)
                expected = hashlib.sha256(data).digest()
                assert (
                    digest == "sha256=" + base64.urlsafe_b64encode(expected).rstrip(b"=").decode()
                )
