"""The macOS system keychain: the CA added as a trusted root with `security
add-trusted-cert -d` (admin rights: sudo), removed by its SHA-1 fingerprint so only this CA
goes."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import RunCommands
from .runner import Argv, Runner
from .trust import TrustedCA

SYSTEM_KEYCHAIN = "/Library/Keychains/System.keychain"


@dataclass(frozen=True)
class Keychain:
    path: str = SYSTEM_KEYCHAIN

    def check(self, ca: TrustedCA, runner: Runner) -> bool:
        found = runner.run(("security", "find-certificate", "-a", "-Z", self.path), check=False)
        return ca.sha1 in found.output

    def step(self, ca: TrustedCA, sudo: Argv) -> RunCommands:
        return RunCommands(
            "trust the CA in the macOS system keychain",
            run=(
                (
                    *sudo,
                    "security",
                    "add-trusted-cert",
                    "-d",
                    "-r",
                    "trustRoot",
                    "-k",
                    self.path,
                    str(ca.path),
                ),
            ),
            undo=(
                (*sudo, "security", "remove-trusted-cert", "-d", str(ca.path)),
                (*sudo, "security", "delete-certificate", "-Z", ca.sha1, self.path),
            ),
            store="system (macOS keychain)",
        )
