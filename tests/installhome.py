"""A redirected home for the install tests: `transcache` subprocesses (and in-process calls,
through monkeypatch) see HOME, XDG_RUNTIME_DIR and XDG_CONFIG_HOME inside a temporary
directory, so nothing touches the real ~/.bashrc, user manager or trust stores. PATH starts
with this interpreter's bin directory, so `pip`, `uv` and `transcache` are this venv's."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from transcache._launch import client_environment
from transcache.install.installer import Machine

TRANSCACHE = (sys.executable, "-m", "transcache")
COMMAND_TIMEOUT = 120.0
# Variables that would point the tests' installs and shells at the real machine.
REDIRECTED = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "ZDOTDIR")
# What `snapshot` records for a directory (a symlink records its target, a file its bytes).
DIRECTORY = "<directory>"


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes), symlink (target) and directory under root, by relative path."""
    result: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            result[key] = os.readlink(path)
        elif path.is_dir():
            result[key] = DIRECTORY
        elif path.is_file():
            result[key] = path.read_bytes()
    return result


@dataclass(frozen=True)
class Home:
    root: Path
    runtime: Path

    @property
    def path(self) -> Path:
        return self.root / "home"

    @property
    def data_dir(self) -> Path:
        return self.path / ".local" / "share" / "transcache"

    @property
    def config_dir(self) -> Path:
        return self.path / ".config"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # Nothing of the machine's own proxy or CA set-up: a test states what it needs.
        dropped = {*REDIRECTED, *client_environment("", Path(), Path()), "SSL_CERT_DIR"}
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env["HOME"] = str(self.path)
        env["XDG_RUNTIME_DIR"] = str(self.runtime)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
        env.update(extra or {})
        return env

    def transcache(
        self, *args: str, env: Mapping[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*TRANSCACHE, *args],
            env=dict(env) if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"transcache {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this process's HOME and XDG variables at the redirected home."""
        for name in REDIRECTED:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HOME", str(self.path))
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(self.runtime))


def make_home(tmp_path: Path, files: Iterable[tuple[str, bytes]] = ()) -> Home:
    home = Home(tmp_path, tmp_path / "run")
    home.path.mkdir(parents=True, exist_ok=True)
    home.runtime.mkdir(mode=0o700, exist_ok=True)
    for name, content in files:
        (home.path / name).write_bytes(content)
    return home


def fake_machine(home: Home, **overrides: Any) -> Machine:
    """A Linux machine with no user manager, no zsh, no sudo, no trust stores, no global
    npmrc and no apt, living in `home`; `overrides` describe the machine a test needs (macOS,
    a user manager, ...)."""
    base = Machine(
        platform="linux",
        home=home.path,
        user="tester",
        uid=4242,
        user_manager_running=False,
        zsh_installed=False,
        sudo=(),
        system_store=None,
        global_npmrc=(),
    )
    return dataclasses.replace(base, **overrides)
