"""Linux service manager: a systemd user unit (`Type=notify`; `transcache run` sends READY=1),
optionally with a `.socket` unit whose listening socket `transcache run` adopts.

When a user manager runs (its private socket exists under XDG_RUNTIME_DIR) the unit is
enabled and started; otherwise (containers, ssh sessions without lingering) it is enabled
offline, which creates the wants link so the next user manager starts it, and the caller is
told how to start it now.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import _paths
from .._launch import BUNDLE_VARIABLES, PROXY_VARIABLES
from .plan import RunCommands, Step, WriteFile
from .settings import Settings
from .templates import render

SERVICE_NAME = "transcache.service"
SOCKET_NAME = "transcache.socket"
SYSTEMCTL = ("systemctl", "--user")
# An ExecStart word holding one of these is written in double quotes.
WORD_QUOTED = " \t\n\"'\\;"
# Every variable that could send the service through a proxy or change whom it trusts.
UNSET_VARIABLES = (
    *PROXY_VARIABLES,
    *(name.lower() for name in PROXY_VARIABLES),
    "NO_PROXY",
    "no_proxy",
    *BUNDLE_VARIABLES,
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
)


def unit_dir() -> Path:
    return _paths.xdg_config_home() / "systemd" / "user"


def manager_running(environ: Mapping[str, str] = os.environ) -> bool:
    runtime = environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return (Path(runtime) / "systemd" / "private").exists()


def quote(arg: str, *, executable: bool = False) -> str:
    """One ExecStart word: specifiers (%) escaped, and variables ($) in arguments (systemd
    substitutes none in the executable's path, so `$$` there would stay two characters);
    quoted when needed. inputs.py refuses what no quoting carries: control characters, and
    quotes or backslashes in the executable's path."""
    arg = arg.replace("%", "%%")
    if not executable:
        arg = arg.replace("$", "$$")
    if arg and not any(c in arg for c in WORD_QUOTED):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_service(settings: Settings, python: str = sys.executable) -> str:
    program, *arguments = [python, "-m", "transcache", *settings.run_arguments()]
    return render(
        SERVICE_NAME,
        exec_start=" ".join([quote(program, executable=True), *map(quote, arguments)]),
        unset_environment=" ".join(UNSET_VARIABLES),
    )


def render_socket(settings: Settings) -> str:
    host = f"[{settings.listen_host}]" if ":" in settings.listen_host else settings.listen_host
    return render(SOCKET_NAME, listen=f"{host}:{settings.listen_port}")


def steps(settings: Settings, *, running: bool, user: str, python: str) -> list[Step]:
    service = unit_dir() / SERVICE_NAME
    socket = unit_dir() / SOCKET_NAME
    files: list[Step] = [WriteFile(service, render_service(settings, python).encode())]
    unit: str = SERVICE_NAME
    units: tuple[Path, ...] = (service,)
    if settings.socket_activation:
        files.append(WriteFile(socket, render_socket(settings).encode()))
        unit, units = SOCKET_NAME, (service, socket)
    enable: RunCommands
    if running:
        enable = RunCommands(
            f"enable and start {unit}",
            run=(
                (*SYSTEMCTL, "daemon-reload"),
                (*SYSTEMCTL, "enable", unit),
                (*SYSTEMCTL, "restart", unit),
            ),
            undo=((*SYSTEMCTL, "disable", "--now", unit), (*SYSTEMCTL, "daemon-reload")),
            depends_on=units,
        )
    else:
        enable = RunCommands(
            f"enable {unit} (no user manager runs: it starts with the next one)",
            run=((*SYSTEMCTL, "enable", unit),),
            undo=((*SYSTEMCTL, "disable", unit),),
            depends_on=units,
        )
    result = [*files, enable]
    if settings.at_boot:
        result.append(
            RunCommands(
                "start the user manager at boot (linger)",
                run=(("loginctl", "enable-linger", user),),
                undo=(("loginctl", "disable-linger", user),),
            )
        )
    return result


def start_command(settings: Settings) -> str:
    unit = SOCKET_NAME if settings.socket_activation else SERVICE_NAME
    return shlex.join((*SYSTEMCTL, "start", unit))


def start_hint(settings: Settings) -> str:
    return (
        f"no systemd user manager runs here: start it with `{start_command(settings)}` "
        f"once one does, or run `transcache {' '.join(settings.run_arguments())}`"
    )


def installed(names: Sequence[str] = (SERVICE_NAME,)) -> tuple[bool, bool]:
    """(unit file present, enabled: its wants link exists)."""
    directory = unit_dir()
    present = all((directory / name).exists() for name in names)
    enabled = any(
        (directory / target / name).is_symlink()
        for name in (SERVICE_NAME, SOCKET_NAME)
        for target in ("default.target.wants", "sockets.target.wants")
    )
    return present, enabled


def log_hint() -> str:
    return f"journalctl --user -u {SERVICE_NAME}"
