"""What `install` and `uninstall` raise; the CLI prints the message and exits 1."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import TranscacheError


class InstallError(TranscacheError):
    """What install or uninstall cannot do; the message says what and why."""


class RolledBackError(InstallError):
    """A plan failed part-way and what it had changed was reverted; `leftovers` lists what
    could not be (an undo command that failed)."""

    def __init__(self, cause: BaseException, leftovers: Sequence[str]) -> None:
        self.leftovers = list(leftovers)
        if self.leftovers:
            message = f"{cause}; undone, except: {'; '.join(self.leftovers)}"
        else:
            message = f"{cause}; undone: nothing of this install is left"
        super().__init__(message)
