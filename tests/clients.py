"""Running real clients (curl, pip, uv, git) as the tests do: explicit env, captured output,
a failure message that carries what the client printed."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

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
