"""Applying a plan, and undoing what the manifest records.

`apply` makes the changes `plan.diff` lists, in order, and records each in the manifest as it
goes (saved after every change, so an interrupted install can still be undone): files with
their sha256, blocks with what they replaced, commands with their undo commands, directories
it created. `undo` walks the manifest backwards.

`apply` is all or nothing for the plan's steps: when one fails (a command, a write), every
change it made before is reverted, newest first (files get their previous bytes back, new
commands their undo commands, new directories are removed), the manifest is put back as it
was, and `RolledBackError` says what failed. Commands that already ran before this install
and ran again (a restart after a changed unit) are not undone; nor is the undoing of what
the plan no longer wants, which comes first.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .blocks import remove_block
from .errors import RolledBackError
from .files import decode, encode, read, sha256, write_atomically, write_in_place
from .manifest import BlockEntry, CommandsEntry, DirEntry, Entry, FileEntry, Manifest
from .plan import Change, CreateDir, Disk, Edit, Record, Run, Step, Undo, Write, diff
from .runner import CommandError, Runner


@dataclass
class Outcome:
    """What `apply` or `undo` did (for the CLI to report)."""

    changed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Restore:
    """A file as it was before apply changed it (`previous` None: it did not exist)."""

    path: Path
    previous: bytes | None
    mode: int
    in_place: bool

    @classmethod
    def take(cls, path: Path, *, in_place: bool) -> _Restore:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            return cls(path, None, 0, in_place)
        return cls(path, path.read_bytes(), mode, in_place)

    def revert(self) -> None:
        if self.previous is None:
            self.path.unlink(missing_ok=True)
        elif read(self.path) == self.previous:
            return
        elif self.in_place:
            write_in_place(self.path, self.previous)
        else:
            write_atomically(self.path, self.previous, self.mode)


# What apply did, oldest first: a file to restore, or a manifest entry (a directory, commands)
# it added, undone as uninstall would.
_Done = _Restore | DirEntry | CommandsEntry


def apply(steps: Sequence[Step], manifest: Manifest, runner: Runner, save: Path) -> Outcome:
    """Bring the machine to `steps`, recording into `manifest` (saved to `save` after every
    change). When a change fails, what the steps changed is reverted and RolledBackError
    raised (see the module comment)."""
    outcome = Outcome()
    changes = diff(steps, manifest, Disk.observe(steps))
    for change in changes:
        if isinstance(change, Undo):
            undo_entry(change.entry, runner, outcome)
            manifest.entries.remove(change.entry)
            manifest.save(save)
    recorded = list(manifest.entries)
    done: list[_Done] = []
    try:
        for change in changes:
            if not isinstance(change, Undo):
                _make(change, manifest, runner, save, outcome, done)
                manifest.save(save)
    except BaseException as exc:
        leftovers = _revert(done, runner)
        manifest.entries[:] = recorded
        manifest.save(save)
        if isinstance(exc, Exception):
            raise RolledBackError(exc, leftovers) from exc
        raise
    manifest.save(save)
    return outcome


def _make(
    change: Change,
    manifest: Manifest,
    runner: Runner,
    save: Path,
    outcome: Outcome,
    done: list[_Done],
) -> None:
    if isinstance(change, Record):
        manifest.record(change.entry)
    elif isinstance(change, Write):
        _create_dirs(change.new_dirs, manifest, done)
        done.append(_Restore.take(change.path, in_place=False))
        write_atomically(change.path, change.content, change.mode)
        manifest.record(change.entry)
        outcome.changed.append(f"wrote {change.path}")
    elif isinstance(change, Edit):
        _create_dirs(change.new_dirs, manifest, done)
        done.append(_Restore.take(change.path, in_place=True))
        if change.previous is None:
            change.path.write_bytes(change.content)
        else:
            write_in_place(change.path, change.content)
        outcome.changed.append(f"updated {change.path}")
    elif isinstance(change, CreateDir):
        _create_dirs(change.new_dirs, manifest, done)
        outcome.changed.append(f"created {change.new_dirs[-1]}")
    elif isinstance(change, Run):
        if change.record is not None:
            # Recorded before running: commands that fail half-way are still undone.
            manifest.record(change.record)
            done.append(change.record)
            manifest.save(save)
        for argv in change.step.run:
            runner.run(argv)
        outcome.changed.append(change.step.description)


def _create_dirs(directories: Iterable[Path], manifest: Manifest, done: list[_Done]) -> None:
    for directory in directories:
        directory.mkdir()
        entry = DirEntry(directory)
        manifest.record(entry)
        done.append(entry)


def _revert(done: list[_Done], runner: Runner) -> list[str]:
    """Undo `done`, newest first; what could not be undone."""
    outcome = Outcome()
    for change in reversed(done):
        if isinstance(change, _Restore):
            try:
                change.revert()
            except OSError as exc:
                outcome.warnings.append(f"cannot restore {change.path}: {exc}")
        else:
            undo_entry(change, runner, outcome)
    return outcome.warnings


def undo(manifest: Manifest, runner: Runner) -> Outcome:
    """Reverse every manifest entry, last first. Failures become warnings: uninstall goes on
    and removes everything else."""
    outcome = Outcome()
    for entry in reversed(manifest.entries):
        undo_entry(entry, runner, outcome)
    return outcome


def undo_entry(entry: Entry, runner: Runner, outcome: Outcome) -> None:
    if isinstance(entry, CommandsEntry):
        for argv in entry.undo:
            try:
                runner.run(argv)
            except CommandError as exc:
                outcome.warnings.append(str(exc))
        outcome.changed.append(f"undid: {entry.description}")
    elif isinstance(entry, FileEntry):
        current = read(entry.path)
        if current is None:
            return
        if sha256(current) != entry.sha256:
            outcome.warnings.append(f"kept {entry.path}: it was changed after install")
            return
        entry.path.unlink()
        outcome.changed.append(f"removed {entry.path}")
    elif isinstance(entry, BlockEntry):
        current = read(entry.path)
        if current is None:
            return
        text = remove_block(decode(current), entry.record)
        if entry.created and not text:
            entry.path.unlink()
            outcome.changed.append(f"removed {entry.path}")
        elif encode(text) != current:
            write_in_place(entry.path, encode(text))
            outcome.changed.append(f"restored {entry.path}")
    else:
        remove_empty_dirs([entry.path])


def remove_empty_dirs(directories: Iterable[Path]) -> list[Path]:
    """Remove those of `directories` that are empty (deepest first, so a parent emptied by
    removing its child goes too); the ones removed."""
    removed = []
    for directory in sorted(set(directories), key=lambda p: len(p.parts), reverse=True):
        try:
            directory.rmdir()
        except OSError:
            continue  # not empty (something else lives there now) or already gone
        removed.append(directory)
    return removed
