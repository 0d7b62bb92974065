"""The Linux system trust store. Each distribution family keeps local anchors in a directory
and rebuilds its bundles with one command; which family we are on is detected from that
data (the command exists and the anchor directory's parent does). Debian's rebuild does not
drop removed anchors' links unless asked, hence `--fresh` after removal."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .plan import RunCommands
from .runner import Argv
from .trust import TrustedCA


@dataclass(frozen=True)
class LinuxStore:
    family: str
    anchor_dir: Path
    suffix: str
    update: Argv
    update_after_removal: Argv

    def anchor(self, ca: TrustedCA) -> Path:
        return self.anchor_dir / f"{ca.name}{self.suffix}"

    def check(self, ca: TrustedCA) -> bool:
        try:
            return self.anchor(ca).read_bytes() == ca.pem
        except OSError:
            return False

    def step(self, ca: TrustedCA, sudo: Argv) -> RunCommands:
        anchor = str(self.anchor(ca))
        return RunCommands(
            f"trust the CA in the {self.family} system store",
            run=(
                (*sudo, "install", "-D", "-m", "0644", str(ca.path), anchor),
                (*sudo, *self.update),
            ),
            undo=((*sudo, "rm", "-f", anchor), (*sudo, *self.update_after_removal)),
            store=f"system ({self.family})",
        )


STORES = (
    LinuxStore(
        "Debian/Ubuntu",
        Path("/usr/local/share/ca-certificates"),
        ".crt",
        ("update-ca-certificates",),
        ("update-ca-certificates", "--fresh"),
    ),
    LinuxStore(
        "Fedora/RHEL",
        Path("/etc/pki/ca-trust/source/anchors"),
        ".pem",
        ("update-ca-trust", "extract"),
        ("update-ca-trust", "extract"),
    ),
    LinuxStore(
        "Arch",
        Path("/etc/ca-certificates/trust-source/anchors"),
        ".crt",
        ("trust", "extract-compat"),
        ("trust", "extract-compat"),
    ),
    LinuxStore(
        "SUSE",
        Path("/etc/pki/trust/anchors"),
        ".pem",
        ("update-ca-certificates",),
        ("update-ca-certificates",),
    ),
)


def detect() -> LinuxStore | None:
    for store in STORES:
        if shutil.which(store.update[0]) and store.anchor_dir.parent.is_dir():
            return store
    return None
