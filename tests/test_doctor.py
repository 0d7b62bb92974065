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

from transcache.install.doctor import CLIENTS, failure_reason, probe_environment
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
    installed = installed_clients(user_env)
    assert {"pip", "uv", "git", "curl"} <= set(installed)
    assert {name: found[name] for name in installed} == dict.fromkeys(installed, "OK"), found
    assert set(found) == {c.name for c in CLIENTS}
    assert result.returncode == 0


def test_doctor_lists_clients_that_are_not_installed(tmp_path: Path) -> None:
    result = doctor({"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert report(result) == {c.name: "not installed" for c in CLIENTS}
    assert result.returncode == 0


# What cargo printed with RUST_BACKTRACE=full set by the user (abridged): doctor used to
# report its last line, "13: <unknown>".
CARGO_BACKTRACE = """\
    Updating `transcache-doctor` index
error: failed to query replaced source registry `crates-io`

Caused by:
  download of config.json failed

Caused by:
  [60] SSL peer certificate or SSH remote key was not OK (SSL certificate problem: unable to \
get local issuer certificate)
Stack backtrace:
   0: anyhow::error::<impl anyhow::Error>::msg
   1: cargo::sources::registry::http_remote::HttpRegistry::handle_completed_downloads
  12: __libc_start_main
  13: <unknown>
"""


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (
            CARGO_BACKTRACE,
            "error: failed to query replaced source registry `crates-io`: [60] SSL peer "
            "certificate or SSH remote key was not OK (SSL certificate problem: unable to get "
            "local issuer certificate)",
        ),
        (
            "Looking in indexes: https://transcache.invalid/simple/\n"
            "WARNING: Retrying (Retry(total=4)) after connection broken\n"
            "ERROR: Could not find a version that satisfies the requirement transcache-doctor\n"
            "ERROR: No matching distribution found for transcache-doctor\n",
            "ERROR: Could not find a version that satisfies the requirement transcache-doctor",
        ),
        (
            "fatal: unable to access 'https://transcache.invalid/git/doctor.git/': "
            "SSL certificate problem\n",
            "fatal: unable to access 'https://transcache.invalid/git/doctor.git/': "
            "SSL certificate problem",
        ),
        ("\x1b[31mnpm error\x1b[0m code ECONNREFUSED\n", "npm error code ECONNREFUSED"),
        ("something went wrong\n   at Object.<anonymous> (x.js:1:1)\n", "something went wrong"),
        ("", "failed without a message"),
    ],
)
def test_a_clients_failure_is_reported_by_its_error_line(output: str, reason: str) -> None:
    assert failure_reason(output) == reason


def test_probes_run_without_the_users_backtrace_settings() -> None:
    cargo = next(c for c in CLIENTS if c.name == "cargo")
    env = probe_environment(cargo, {"PATH": "/bin", "RUST_BACKTRACE": "full"})
    assert "RUST_BACKTRACE" not in env
    assert env["PATH"] == "/bin" and env["CARGO_NET_RETRY"] == "0"


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
