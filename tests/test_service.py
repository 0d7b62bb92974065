"""The service side of `transcache install`: the systemd units pass `systemd-analyze verify`,
enable/disable work offline, the environment.d generator exports our variables, `transcache
run` speaks the readiness and socket-activation protocols, and the launchd plist is sound.
Nothing here needs a running systemd: everything is checked offline, in a redirected home."""

from __future__ import annotations

import os
import plistlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from transcache import _notify
from transcache._launch import LISTENING_PREFIX
from transcache.install import launchd, systemd
from transcache.install.apply import undo
from transcache.install.installer import build_plan, install, prepare_ca
from transcache.install.manifest import Manifest
from transcache.install.runner import RecordingRunner, SubprocessRunner
from transcache.install.settings import Settings, manifest_path

from .clients import curl
from .installhome import TRANSCACHE, Home, fake_machine, make_home

ENVIRONMENT_GENERATOR = Path(
    "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator"
)
SERVICE_TIMEOUT = 30.0


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    home = make_home(tmp_path)
    home.patch(monkeypatch)
    return home


def verify(home: Home, *units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "systemd-analyze",
            "--user",
            "verify",
            "--man=no",
            "--recursive-errors=yes",
            *map(str, units),
        ],
        env=home.env(),
        capture_output=True,
        text=True,
        timeout=SERVICE_TIMEOUT,
        check=False,
    )


def test_rendered_units_pass_systemd_analyze_verify(home: Home) -> None:
    settings = Settings(socket_activation=True)
    plan = build_plan(settings, fake_machine(home), prepare_ca(settings))
    install(settings, plan, SubprocessRunner())
    service = systemd.unit_dir() / systemd.SERVICE_NAME
    socket_unit = systemd.unit_dir() / systemd.SOCKET_NAME
    result = verify(home, service, socket_unit)
    assert result.returncode == 0, result.stderr
    text = service.read_text()
    assert "Type=notify" in text and "Restart=on-failure" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID\n" in text
    unset = next(line for line in text.splitlines() if line.startswith("UnsetEnvironment="))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE"):
        assert name in unset.split("=", 1)[1].split()
    assert "ListenStream=127.0.0.1:8797" in socket_unit.read_text()


def test_a_unit_with_a_broken_exec_start_fails_verify(home: Home) -> None:
    # The verify above proves something: it rejects a unit whose program does not exist.
    unit = systemd.unit_dir() / systemd.SERVICE_NAME
    unit.parent.mkdir(parents=True)
    unit.write_text(systemd.render_service(Settings(), python="/nonexistent/python"))
    assert verify(home, unit).returncode != 0


def test_offline_enable_and_disable_create_and_remove_the_wants_link(home: Home) -> None:
    link = systemd.unit_dir() / "default.target.wants" / systemd.SERVICE_NAME
    home.transcache("install")
    assert link.is_symlink()
    assert link.resolve() == systemd.unit_dir() / systemd.SERVICE_NAME
    home.transcache("uninstall")
    assert not link.exists() and not link.is_symlink()


def test_with_a_user_manager_the_unit_is_enabled_started_and_stopped_again(home: Home) -> None:
    settings = Settings(at_boot=True)
    runner = RecordingRunner()
    plan = build_plan(settings, fake_machine(home, user_manager_running=True), prepare_ca(settings))
    install(settings, plan, runner)
    assert runner.calls == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "transcache.service"),
        ("systemctl", "--user", "restart", "transcache.service"),
        ("loginctl", "enable-linger", "tester"),
    ]
    runner.calls.clear()
    undo(Manifest.load(manifest_path()), runner)
    assert runner.calls == [
        ("loginctl", "disable-linger", "tester"),
        ("systemctl", "--user", "disable", "--now", "transcache.service"),
        ("systemctl", "--user", "daemon-reload"),
    ]


def test_a_changed_unit_restarts_the_service_and_an_unchanged_one_does_not(home: Home) -> None:
    runner = RecordingRunner()
    running = fake_machine(home, user_manager_running=True)
    for settings in (Settings(), Settings(), Settings(listen_port=9000)):
        install(settings, build_plan(settings, running, prepare_ca(settings)), runner)
    restarts = [c for c in runner.calls if c[2:3] == ("restart",)]
    assert len(restarts) == 2


def test_environment_d_generator_exports_our_variables(home: Home) -> None:
    home.transcache("install", "--listen", "127.0.0.1:9123")
    result = subprocess.run(
        [str(ENVIRONMENT_GENERATOR)],
        env=home.env(),
        capture_output=True,
        text=True,
        timeout=SERVICE_TIMEOUT,
        check=True,
    )
    exported = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert exported["HTTPS_PROXY"] == exported["https_proxy"] == "http://127.0.0.1:9123"
    assert exported["SSL_CERT_FILE"] == str(home.data_dir / "ca" / "bundle.pem")
    assert exported["NODE_EXTRA_CA_CERTS"] == str(home.data_dir / "ca" / "ca.pem")


# -- readiness and socket activation ------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(SERVICE_TIMEOUT)
        yield sock, path


def run_args(tmp_path: Path) -> list[str]:
    return ["--ca-dir", str(tmp_path / "ca"), "--cache-dir", str(tmp_path / "cache")]


def test_run_sends_ready_then_stopping_to_notify_socket(
    tmp_path: Path, notify_socket: tuple[socket.socket, Path]
) -> None:
    sock, path = notify_socket
    process = subprocess.Popen(
        [*TRANSCACHE, "run", "--listen", "127.0.0.1:0", *run_args(tmp_path)],
        env={**os.environ, "NOTIFY_SOCKET": str(path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sock.recv(4096) == b"READY=1"
        assert process.stdout is not None
        assert process.stdout.readline().startswith(LISTENING_PREFIX)
        process.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert process.wait(SERVICE_TIMEOUT) == 0
    finally:
        process.kill()
        process.wait()


def test_run_serves_on_the_socket_passed_by_systemd_socket_activate(
    tmp_path: Path, notify_socket: tuple[socket.socket, Path]
) -> None:
    # Reserve a free port, then let systemd-socket-activate bind it (it sets SO_REUSEADDR).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock, path = notify_socket
    process = subprocess.Popen(
        [
            "systemd-socket-activate",
            "--listen",
            f"127.0.0.1:{port}",
            "--setenv",
            f"NOTIFY_SOCKET={path}",
            sys.executable,
            "-m",
            "transcache",
            "run",
            "--listen",
            "127.0.0.1:1",  # ignored: the inherited socket wins
            *run_args(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        # systemd-socket-activate says when it listens; the first connection starts us.
        assert "Listening on" in process.stderr.readline()
        health = curl(
            {"PATH": os.environ["PATH"]}, "--noproxy", "*", f"http://127.0.0.1:{port}/healthz"
        )
        assert health.stdout == "ok\n"
        assert sock.recv(4096) == b"READY=1"
        assert process.stdout is not None
        assert process.stdout.readline() == f"{LISTENING_PREFIX}http://127.0.0.1:{port}\n"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(SERVICE_TIMEOUT)


# -- launchd --------------------------------------------------------------------------------


def test_launchd_plist_round_trips_with_absolute_paths_and_matching_label(home: Home) -> None:
    settings = Settings()
    plist = plistlib.loads(launchd.render_plist(settings).encode())
    assert plist["Label"] == launchd.LABEL == launchd.plist_path().stem
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    for value in (
        *plist["ProgramArguments"][:1],
        plist["StandardOutPath"],
        plist["StandardErrorPath"],
    ):
        assert Path(value).is_absolute(), value
    assert plist["StandardErrorPath"].startswith(str(home.path / "Library" / "Logs" / "transcache"))
    assert plist["ProgramArguments"][1:4] == ["-m", "transcache", "run"]
    assert str(settings.ca_dir) in plist["ProgramArguments"]


def test_launchctl_bootstrap_and_bootout_as_recorded_by_a_fake_launchctl(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "launchctl.calls"
    fake = bin_dir / "launchctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = Settings()
    darwin = fake_machine(home, platform="darwin", uid=501)
    install(settings, build_plan(settings, darwin, prepare_ca(settings)), SubprocessRunner())
    plist = launchd.plist_path()
    assert plistlib.loads(plist.read_bytes())["Label"] == launchd.LABEL
    undo(Manifest.load(manifest_path()), SubprocessRunner())
    assert calls.read_text().splitlines() == [
        f"bootout gui/501/{launchd.LABEL}",
        f"bootstrap gui/501 {plist}",
        f"bootout gui/501/{launchd.LABEL}",
    ]
    assert not plist.exists()
    # macOS gets no environment.d file, but the shells' env.sh and fish file.
    assert not (home.config_dir / "environment.d").exists()


def test_dropping_an_option_on_reinstall_undoes_what_it_did(home: Home) -> None:
    units = systemd.unit_dir()
    home.transcache("install", "--socket-activation")
    assert (units / "sockets.target.wants" / systemd.SOCKET_NAME).is_symlink()
    dry = home.transcache("install", "--dry-run").stdout
    assert "$ systemctl --user disable transcache.socket" in dry
    home.transcache("install")
    assert not (units / systemd.SOCKET_NAME).exists()
    assert not (units / "sockets.target.wants" / systemd.SOCKET_NAME).is_symlink()
    assert (units / "default.target.wants" / systemd.SERVICE_NAME).is_symlink()
    home.transcache("uninstall")
    assert not units.exists()


def test_sockets_meant_for_another_process_are_left_alone() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert _notify.inherited_sockets(environ) == []
    assert environ == {}  # and no child of ours mistakes them for its own


def test_without_notify_socket_nothing_is_sent() -> None:
    assert _notify.notify("READY=1", {}) is False
