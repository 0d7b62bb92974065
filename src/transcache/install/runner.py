"""How the installer runs commands. Everything that changes the machine outside our own files
(systemctl, launchctl, update-ca-certificates, certutil, ...) goes through a `Runner`, so tests
swap in `RecordingRunner`, which records each command and answers from a table, raising on a
failure exactly as the real runner does."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .._errors import TranscacheError

COMMAND_TIMEOUT = 300.0

Argv = tuple[str, ...]


class CommandError(TranscacheError):
    """A command failed (non-zero exit, or it could not be started)."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.output = output
        detail = output.strip().splitlines()[-1] if output.strip() else f"exit status {returncode}"
        super().__init__(f"`{' '.join(argv)}` failed: {detail}")


@dataclass(frozen=True)
class Completed:
    returncode: int
    output: str


class Runner(Protocol):
    def run(self, argv: Sequence[str], *, check: bool = True) -> Completed:
        """Run `argv`; with `check`, raise CommandError unless it exits 0."""
        ...


class SubprocessRunner:
    """Runs commands for real, stdin attached (sudo may ask for a password)."""

    def run(self, argv: Sequence[str], *, check: bool = True) -> Completed:
        try:
            result = subprocess.run(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            if check:
                raise CommandError(argv, -1, str(exc)) from exc
            return Completed(-1, str(exc))
        if check and result.returncode != 0:
            raise CommandError(argv, result.returncode, result.stdout)
        return Completed(result.returncode, result.stdout)


@dataclass
class RecordingRunner:
    """Records every command; `answers` maps an argv to (exit status, output), default 0."""

    answers: Mapping[Argv, tuple[int, str]] = field(default_factory=dict)
    calls: list[Argv] = field(default_factory=list)

    def run(self, argv: Sequence[str], *, check: bool = True) -> Completed:
        key = tuple(argv)
        self.calls.append(key)
        returncode, output = self.answers.get(key, (0, ""))
        if check and returncode != 0:
            raise CommandError(argv, returncode, output)
        return Completed(returncode, output)
