"""The command line as a user meets it: `ca path`, `run`'s start-up output and clean stops,
and clear errors for bad flags."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

from transcache._launch import LISTENING_PREFIX

TRANSCACHE = [sys.executable, "-m", "transcache"]


def transcache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRANSCACHE, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_ca_path_prints_the_certificate_path_and_creates_a_private_key(tmp_path: Path) -> None:
    result = transcache("ca", "path", "--ca-dir", str(tmp_path / "ca"))
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == tmp_path / "ca" / "ca.pem"
    assert path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600


def test_run_prints_its_address_and_the_variables_then_stops_on_sigint(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            *TRANSCACHE,
            "run",
            "--listen",
            "127.0.0.1:0",
            "--ca-dir",
            str(tmp_path / "ca"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr").open("w"),
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith(LISTENING_PREFIX + "http://127.0.0.1:")
    url = first[len(LISTENING_PREFIX) :].strip()
    assert int(url.rsplit(":", 1)[1]) > 0
    process.send_signal(signal.SIGINT)
    out = first + process.stdout.read()
    assert process.wait(30) == 0
    err = (tmp_path / "stderr").read_text()
    assert f"export HTTPS_PROXY={url}\n" in out
    assert f"export https_proxy={url}\n" in out
    assert f"export SSL_CERT_FILE={tmp_path / 'ca' / 'bundle.pem'}\n" in out
    assert "Traceback" not in err
    bundle = (tmp_path / "ca" / "bundle.pem").read_text()
    assert bundle.endswith((tmp_path / "ca" / "ca.pem").read_text())


def test_run_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = transcache(
            "run",
            "--listen",
            f"127.0.0.1:{port}",
            "--ca-dir",
            str(tmp_path / "ca"),
            "--cache-dir",
            str(tmp_path / "cache"),
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_flags_are_usage_errors(tmp_path: Path) -> None:
    for args in (
        ["--resolve", "nonsense"],
        ["--listen", "nowhere"],
        ["--upstream-ca", str(tmp_path / "missing.pem")],
    ):
        result = transcache("run", *args)
        assert result.returncode == 2
        assert "usage:" in result.stderr
        assert "Traceback" not in result.stderr


def test_unreadable_ca_is_a_clear_error(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / "ca.pem").write_text("not a certificate")
    result = transcache("ca", "path", "--ca-dir", str(ca_dir))
    assert result.returncode == 1
    assert str(ca_dir / "ca.pem") in result.stderr
    assert "Traceback" not in result.stderr
    assert os.path.exists(ca_dir / "ca.pem")
