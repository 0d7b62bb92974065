"""macOS service manager: a LaunchAgent (RunAtLoad; KeepAlive restarts it after a failure,
not after a clean stop), logging to ~/Library/Logs/transcache/, loaded into the user's GUI
domain with `launchctl bootstrap gui/UID`. Reloading a changed plist needs a bootout first;
that bootout may fail (nothing loaded yet), so it runs through `/bin/sh -c '... || true'`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from .. import _paths
from .plan import MakeDir, RunCommands, Step, WriteFile
from .settings import Settings
from .templates import render

LABEL = "dev.transcache.proxy"
PLIST_TEMPLATE = "launchd.plist"
LOG_NAME = "transcache.log"


def plist_path() -> Path:
    return _paths.launch_agents_dir() / f"{LABEL}.plist"


def log_path() -> Path:
    return _paths.macos_log_dir() / LOG_NAME


def render_plist(settings: Settings, python: str = sys.executable) -> str:
    # Element text: `escape` covers &, < and >; inputs.py refuses what XML cannot hold.
    argv = [python, "-m", "transcache", *settings.run_arguments()]
    return render(
        PLIST_TEMPLATE,
        label=LABEL,
        program_arguments="\n".join(f"\t\t<string>{escape(a)}</string>" for a in argv),
        log=escape(str(log_path())),
    )


def steps(settings: Settings, *, uid: int, python: str) -> list[Step]:
    plist = plist_path()
    domain = f"gui/{uid}"
    bootout = ("launchctl", "bootout", f"{domain}/{LABEL}")
    return [
        # launchd does not create the log directory.
        MakeDir(_paths.macos_log_dir()),
        WriteFile(plist, render_plist(settings, python).encode()),
        RunCommands(
            f"load {LABEL} into launchd",
            run=(
                ("/bin/sh", "-c", f"{shlex.join(bootout)} 2>/dev/null || true"),
                ("launchctl", "bootstrap", domain, str(plist)),
            ),
            undo=(bootout,),
            depends_on=(plist,),
        ),
    ]


def installed() -> tuple[bool, bool]:
    present = plist_path().exists()
    return present, present


def start_command(uid: int) -> str:
    return shlex.join(("launchctl", "kickstart", f"gui/{uid}/{LABEL}"))


def log_hint() -> str:
    return str(log_path())
