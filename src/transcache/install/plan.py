"""Plans, the manifest, and applying and undoing them.

An install is a list of steps, built by the service, environment and trust-store modules
without touching anything:

- `WriteFile`: a file that is entirely ours (unit, plist, env.sh, ...);
- `EditBlock`: our fenced block in a user's file (see blocks.py);
- `MakeDir`: a directory another program writes into (launchd's log directory);
- `RunCommands`: commands that change state elsewhere (enable a unit, trust the CA), with
  the commands that undo them, and the files whose change makes them run again.

`apply` first undoes what the manifest holds but the plan no longer wants (an option dropped
since the last install), then compares each step with the machine and the manifest and does
only what differs: a file whose bytes are already right is not written, and commands run
when they are not in the manifest yet or a file they depend on was just written. So a
second install changes nothing. Everything done is recorded in the manifest (JSON), in the
order it was done: files with their sha256, blocks with what they replaced, commands with
their undo commands, directories we created. `undo` walks the manifest backwards. `describe`
renders a plan for `--dry-run` (diffs and commands) from the same comparison.

`apply` is all or nothing for the plan's steps: when one fails (a command, a write), every
change it made before is reverted, newest first (files get their previous bytes back, new
commands their undo commands, new directories are removed), the manifest is put back as it
was, and `RolledBackError` says what failed. Commands that already ran before this install
and ran again (a restart after a changed unit) are not undone.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import shlex
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blocks import BlockRecord, insert_block, remove_block
from .runner import Argv, CommandError, Runner

MANIFEST_VERSION = 1
# Text of users' files is decoded this way so any bytes survive a round trip unchanged.
TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"


class InstallError(Exception):
    pass


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


@dataclass(frozen=True)
class WriteFile:
    path: Path
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class EditBlock:
    path: Path
    block: str
    # Create the file when it does not exist (it is deleted again when left empty).
    create: bool = False


@dataclass(frozen=True)
class RunCommands:
    description: str
    run: tuple[Argv, ...]
    undo: tuple[Argv, ...]
    depends_on: tuple[Path, ...] = ()
    # The trust store these commands touch, if any (status and uninstall report it).
    store: str | None = None


@dataclass(frozen=True)
class MakeDir:
    """A directory another program writes into (removed on uninstall when left empty)."""

    path: Path


Step = WriteFile | EditBlock | MakeDir | RunCommands


@dataclass
class Manifest:
    """What installs did, in order, and the settings of the last one."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise InstallError(f"cannot read the install manifest {path}: {exc}") from exc
        if data.get("version") != MANIFEST_VERSION:
            raise InstallError(f"{path}: unknown manifest version {data.get('version')!r}")
        return cls(list(data["entries"]), dict(data.get("settings", {})))

    def save(self, path: Path) -> None:
        data = {"version": MANIFEST_VERSION, "settings": self.settings, "entries": self.entries}
        _write_atomically(path, (json.dumps(data, indent=2) + "\n").encode(), 0o644)

    def find(self, kind: str, key: str, value: Any) -> dict[str, Any] | None:
        for entry in self.entries:
            if entry["kind"] == kind and entry[key] == value:
                return entry
        return None

    @property
    def stores(self) -> list[str]:
        return [e["store"] for e in self.entries if e["kind"] == "commands" and e.get("store")]


@dataclass
class Outcome:
    """What `apply` or `undo` did (for the CLI to report)."""

    changed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _decode(data: bytes) -> str:
    return data.decode(TEXT_ENCODING, TEXT_ERRORS)


def _encode(text: str) -> bytes:
    return text.encode(TEXT_ENCODING, TEXT_ERRORS)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_in_place(path: Path, data: bytes) -> None:
    # A user's file keeps its inode, mode, owner and any symlink pointing at it.
    with path.open("r+b") as f:
        f.write(data)
        f.truncate()


def _new_block_text(
    step: EditBlock, manifest: Manifest
) -> tuple[bytes | None, bytes, dict[str, Any]]:
    """(current bytes, bytes after the edit, the manifest entry for it)."""
    current = _read(step.path)
    text = _decode(current) if current is not None else ""
    new_text, record = insert_block(text, step.block)
    entry = manifest.find("block", "path", str(step.path))
    if entry is None:
        entry = {
            "kind": "block",
            "path": str(step.path),
            "created": current is None,
            "separator": record.separator,
            "previous": record.previous,
        }
    return current, _encode(new_text), entry


def describe(steps: Sequence[Step], manifest: Manifest) -> list[str]:
    """The plan as `--dry-run` shows it: each change as a diff or a command list; steps that
    would change nothing are left out."""
    lines: list[str] = []
    for entry in reversed(stale_entries(steps, manifest)):
        if entry["kind"] == "commands":
            lines.append(f"undo ({entry['description']}):")
            lines.extend(f"  $ {shlex.join(argv)}" for argv in entry["undo"])
        else:
            lines.append(f"remove transcache's {entry['kind']} from {entry['path']}")
    written: set[Path] = set()
    for step in steps:
        if isinstance(step, WriteFile | EditBlock):
            if isinstance(step, WriteFile):
                current, new = _read(step.path), step.content
            else:
                if not step.path.exists() and not step.create:
                    continue
                current, new, _ = _new_block_text(step, manifest)
            if current == new:
                continue
            written.add(step.path)
            verb = "create" if current is None else "modify"
            lines.append(f"{verb} {step.path}")
            lines.extend(
                line.rstrip("\n")
                for line in difflib.unified_diff(
                    _decode(current or b"").splitlines(keepends=True),
                    _decode(new).splitlines(keepends=True),
                    fromfile=str(step.path) if current is not None else "/dev/null",
                    tofile=str(step.path),
                )
            )
        elif isinstance(step, MakeDir):
            if not step.path.is_dir():
                lines.append(f"create directory {step.path}")
        elif _commands_due(step, manifest, written):
            lines.append(f"run ({step.description}):")
            lines.extend(f"  $ {shlex.join(argv)}" for argv in step.run)
    return lines


def _commands_due(step: RunCommands, manifest: Manifest, written: set[Path]) -> bool:
    recorded = manifest.find("commands", "run", [list(a) for a in step.run])
    return recorded is None or any(p in written for p in step.depends_on)


def missing_dirs(directory: Path) -> list[Path]:
    """`directory` and those of its parents that do not exist, outermost first."""
    missing = []
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing.append(path)
    return missing[::-1]


def dir_entry(directory: Path) -> dict[str, Any]:
    return {"kind": "dir", "path": str(directory)}


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
        elif _read(self.path) == self.previous:
            return
        elif self.in_place:
            _write_in_place(self.path, self.previous)
        else:
            _write_atomically(self.path, self.previous, self.mode)


# What apply did, oldest first: a file to restore, or a manifest entry (a directory, commands)
# it added, undone as uninstall would.
_Change = _Restore | dict[str, Any]


def _make_parents(path: Path, manifest: Manifest, journal: list[_Change]) -> None:
    for directory in missing_dirs(path.parent):
        directory.mkdir()
        entry = dir_entry(directory)
        manifest.entries.append(entry)
        journal.append(entry)


def apply(steps: Sequence[Step], manifest: Manifest, runner: Runner, save: Path) -> Outcome:
    """Bring the machine to `steps`, recording into `manifest` (saved to `save` after every
    change, so an interrupted install can still be undone). When a step fails, what the
    steps changed is reverted and RolledBackError raised (see the module comment)."""
    outcome = Outcome()
    for entry in reversed(stale_entries(steps, manifest)):
        _undo_entry(entry, runner, outcome)
        manifest.entries.remove(entry)
        manifest.save(save)
    recorded = copy.deepcopy(manifest.entries)
    journal: list[_Change] = []
    try:
        _apply_steps(steps, manifest, runner, save, outcome, journal)
    except BaseException as exc:
        leftovers = _revert(journal, runner)
        manifest.entries[:] = recorded
        manifest.save(save)
        if isinstance(exc, Exception):
            raise RolledBackError(exc, leftovers) from exc
        raise
    manifest.save(save)
    return outcome


def _revert(journal: list[_Change], runner: Runner) -> list[str]:
    """Undo `journal`, newest first; what could not be undone."""
    outcome = Outcome()
    for change in reversed(journal):
        if isinstance(change, _Restore):
            try:
                change.revert()
            except OSError as exc:
                outcome.warnings.append(f"cannot restore {change.path}: {exc}")
        else:
            _undo_entry(change, runner, outcome)
    return outcome.warnings


def _apply_steps(
    steps: Sequence[Step],
    manifest: Manifest,
    runner: Runner,
    save: Path,
    outcome: Outcome,
    journal: list[_Change],
) -> None:
    written: set[Path] = set()
    for step in steps:
        if isinstance(step, WriteFile):
            if _read(step.path) == step.content:
                if manifest.find("file", "path", str(step.path)) is None:
                    manifest.entries.append(_file_entry(step.path, step.content))
                continue
            _make_parents(step.path, manifest, journal)
            journal.append(_Restore.take(step.path, in_place=False))
            _write_atomically(step.path, step.content, step.mode)
            entry = manifest.find("file", "path", str(step.path))
            if entry is None:
                manifest.entries.append(_file_entry(step.path, step.content))
            else:
                entry["sha256"] = sha256(step.content)
            written.add(step.path)
            outcome.changed.append(f"wrote {step.path}")
        elif isinstance(step, EditBlock):
            if not step.path.exists() and not step.create:
                continue
            current, new, entry = _new_block_text(step, manifest)
            if manifest.find("block", "path", str(step.path)) is None:
                manifest.entries.append(entry)
            if current == new:
                continue
            if current is None:
                _make_parents(step.path, manifest, journal)
            journal.append(_Restore.take(step.path, in_place=True))
            if current is None:
                step.path.write_bytes(new)
            else:
                _write_in_place(step.path, new)
            written.add(step.path)
            outcome.changed.append(f"updated {step.path}")
        elif isinstance(step, MakeDir):
            if step.path.is_dir():
                continue
            _make_parents(step.path / "-", manifest, journal)
            outcome.changed.append(f"created {step.path}")
        else:
            if not _commands_due(step, manifest, written):
                continue
            # Recorded before running: commands that fail half-way are still undone.
            if manifest.find("commands", "run", [list(a) for a in step.run]) is None:
                entry = {
                    "kind": "commands",
                    "description": step.description,
                    "run": [list(a) for a in step.run],
                    "undo": [list(a) for a in step.undo],
                    "store": step.store,
                }
                manifest.entries.append(entry)
                journal.append(entry)
                manifest.save(save)
            for argv in step.run:
                runner.run(argv)
            outcome.changed.append(step.description)
        manifest.save(save)


def _file_entry(path: Path, content: bytes) -> dict[str, Any]:
    return {"kind": "file", "path": str(path), "sha256": sha256(content)}


def undo(manifest: Manifest, runner: Runner) -> Outcome:
    """Reverse every manifest entry, last first. Failures become warnings: uninstall goes on
    and removes everything else."""
    outcome = Outcome()
    for entry in reversed(manifest.entries):
        _undo_entry(entry, runner, outcome)
    return outcome


def _undo_entry(entry: dict[str, Any], runner: Runner, outcome: Outcome) -> None:
    path = Path(entry.get("path", ""))
    if entry["kind"] == "commands":
        for argv in entry["undo"]:
            try:
                runner.run(argv)
            except CommandError as exc:
                outcome.warnings.append(str(exc))
        outcome.changed.append(f"undid: {entry['description']}")
    elif entry["kind"] == "file":
        current = _read(path)
        if current is None:
            return
        if sha256(current) != entry["sha256"]:
            outcome.warnings.append(f"kept {path}: it was changed after install")
            return
        path.unlink()
        outcome.changed.append(f"removed {path}")
    elif entry["kind"] == "block":
        current = _read(path)
        if current is None:
            return
        record = BlockRecord(entry["separator"], entry["previous"])
        text = remove_block(_decode(current), record)
        if entry["created"] and not text:
            path.unlink()
            outcome.changed.append(f"removed {path}")
        elif _encode(text) != current:
            _write_in_place(path, _encode(text))
            outcome.changed.append(f"restored {path}")
    elif entry["kind"] == "dir":
        remove_empty_dirs([path])


def _step_key(step: Step) -> tuple[str, object]:
    if isinstance(step, WriteFile):
        return "file", str(step.path)
    if isinstance(step, EditBlock):
        return "block", str(step.path)
    if isinstance(step, MakeDir):
        return "dir", str(step.path)
    return "commands", step.run


def _entry_key(entry: dict[str, Any]) -> tuple[str, object]:
    if entry["kind"] == "commands":
        return "commands", tuple(tuple(argv) for argv in entry["run"])
    return entry["kind"], entry["path"]


def stale_entries(steps: Sequence[Step], manifest: Manifest) -> list[dict[str, Any]]:
    """What an earlier install did that this plan no longer wants (an option dropped, the CA
    replaced): undone first, so the machine ends up as if only this plan had been applied.
    Directories stay: they go with uninstall, once empty."""
    planned = {_step_key(step) for step in steps}
    return [e for e in manifest.entries if e["kind"] != "dir" and _entry_key(e) not in planned]


def needs_root(steps: Iterable[Step]) -> list[Argv]:
    """Commands of `steps` that run through sudo (shown before any of them runs)."""
    return [
        argv for s in steps if isinstance(s, RunCommands) for argv in s.run if argv[:1] == ("sudo",)
    ]
