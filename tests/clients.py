"""Running real clients (curl, pip, uv, git) as the tests do: explicit env, captured output,
a failure message that carries what the client printed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import uv

CLIENT_TIMEOUT = 300.0


def run(
    command: Sequence[str], env: Mapping[str, str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(command),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{command[0]} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def curl(
    env: Mapping[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(["curl", "--silent", "--show-error", "--max-time", "120", *args], env, check=check)


# pip and uv with their own caches and configuration off, as the cache tests need them.
PIP = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "--no-cache-dir"]


def uv_pip_install(
    env: Mapping[str, str], index: str, target: Path, *requirements: str, extra: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    return run(
        [
            uv.find_uv_bin(),
            "pip",
            "install",
            "--no-cache",
            "--python",
            sys.executable,
            "--index-url",
            index,
            "--target",
            str(target),
            *extra,
            *requirements,
        ],
        env,
    )


def pip_download(index: str, dest: Path, *projects: str) -> list[str]:
    """The pip command that downloads `projects` (and dependencies) from `index` to `dest`."""
    return [*PIP, "download", "--dest", str(dest), "--index-url", index, *projects]
