"""NSS databases (Chrome/Chromium's ~/.pki/nssdb, Firefox profiles): our CA added with
`certutil -A` under a serial-stamped nickname, trusted for TLS servers only (`C,,`), removed
by that nickname. A database is recognised by its cert9.db (the sql: format)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .plan import RunCommands
from .runner import Runner
from .trust import TrustedCA

# Where browsers keep NSS databases, relative to HOME; globs match profile directories.
DATABASE_GLOBS = (
    ".pki/nssdb",
    "snap/chromium/current/.pki/nssdb",
    ".mozilla/firefox/*",
    "snap/firefox/common/.mozilla/firefox/*",
    "Library/Application Support/Firefox/Profiles/*",
)
DB_FILE = "cert9.db"
TRUST_FLAGS = "C,,"


@dataclass(frozen=True)
class NSSDatabase:
    directory: Path

    @property
    def spec(self) -> str:
        return f"sql:{self.directory}"

    def check(self, ca: TrustedCA, runner: Runner) -> bool:
        argv = ("certutil", "-d", self.spec, "-L", "-n", ca.name)
        return runner.run(argv, check=False).returncode == 0

    def step(self, ca: TrustedCA) -> RunCommands:
        return RunCommands(
            f"trust the CA in the NSS database {self.directory}",
            run=(
                (
                    "certutil",
                    "-d",
                    self.spec,
                    "-A",
                    "-t",
                    TRUST_FLAGS,
                    "-n",
                    ca.name,
                    "-i",
                    str(ca.path),
                ),
            ),
            undo=(("certutil", "-d", self.spec, "-D", "-n", ca.name),),
            store=f"nss ({self.directory})",
        )


def find_databases(home: Path, globs: Iterable[str] = DATABASE_GLOBS) -> list[NSSDatabase]:
    found = []
    for pattern in globs:
        for directory in sorted(home.glob(pattern)):
            if (directory / DB_FILE).exists():
                found.append(NSSDatabase(directory))
    return found
