"""The Java trust store (the JDK's `cacerts`, through `keytool -cacerts`, Java 9 and later):
our CA imported under a serial-stamped alias, deleted by it. The store belongs to the JDK's
owner, usually root."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from .plan import RunCommands
from .runner import Argv, Runner
from .trust import TrustedCA

# The well-known default password of every JDK's cacerts.
STOREPASS = "changeit"


@dataclass(frozen=True)
class JavaStore:
    keytool: str

    def _argv(self, *args: str) -> Argv:
        return (self.keytool, *args, "-cacerts", "-storepass", STOREPASS, "-noprompt")

    def check(self, ca: TrustedCA, runner: Runner) -> bool:
        return runner.run(self._argv("-list", "-alias", ca.name), check=False).returncode == 0

    def step(self, ca: TrustedCA, sudo: Argv) -> RunCommands:
        return RunCommands(
            "trust the CA in the Java cacerts store",
            run=((*sudo, *self._argv("-importcert", "-alias", ca.name, "-file", str(ca.path))),),
            undo=((*sudo, *self._argv("-delete", "-alias", ca.name)),),
            store="java (cacerts)",
        )


def detect() -> JavaStore | None:
    keytool = shutil.which("keytool")
    return JavaStore(keytool) if keytool else None
