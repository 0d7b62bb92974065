"""Plans, and the one comparison that both `--dry-run` and `apply` consume.

An install is a list of steps, built by the service, environment and trust-store modules
without touching anything:

- `WriteFile`: a file that is entirely ours (unit, plist, env.sh, ...);
- `EditBlock`: our fenced block in a user's file (see blocks.py);
- `MakeDir`: a directory another program writes into (launchd's log directory);
- `RunCommands`: commands that change state elsewhere (enable a unit, trust the CA), with
  the commands that undo them, and the files whose change makes them run again.

`diff(steps, manifest, disk)` is pure: from the plan, the manifest of earlier installs and
what the steps' paths hold now (a `Disk`, data), it returns the changes, in the order they
are to be made. First the undoing of what the manifest holds but the plan no longer wants
(an option dropped since the last install), newest first; then, step by step, only what
differs: a file whose bytes are already right is not written, and commands run when they
are not in the manifest yet or a file they depend on is written. So a second install
changes nothing. `render` turns the changes into the `--dry-run` listing (diffs and
commands); apply.py makes them. Both start from the same list, so they cannot disagree.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .blocks import insert_block
from .errors import InstallError as InstallError  # the CLI takes it from here
from .files import decode, encode, read, sha256
from .manifest import (
    BlockEntry,
    CommandsEntry,
    EntryKey,
    EntryKind,
    FileEntry,
)
from .manifest import Manifest as Manifest  # the CLI takes it from here
from .runner import Argv

DEFAULT_FILE_MODE = 0o644


# -- the steps of a plan ---------------------------------------------------------------------


@dataclass(frozen=True)
class WriteFile:
    path: Path
    content: bytes
    mode: int = DEFAULT_FILE_MODE
    # Holds credentials: `--dry-run` names the file but does not show it.
    secret: bool = False

    @property
    def key(self) -> EntryKey:
        return EntryKind.FILE, self.path


@dataclass(frozen=True)
class EditBlock:
    path: Path
    block: str
    # Create the file when it does not exist (it is deleted again when left empty).
    create: bool = False

    @property
    def key(self) -> EntryKey:
        return EntryKind.BLOCK, self.path


@dataclass(frozen=True)
class RunCommands:
    description: str
    run: tuple[Argv, ...]
    undo: tuple[Argv, ...]
    depends_on: tuple[Path, ...] = ()
    # The trust store these commands touch, if any (status and uninstall report it).
    store: str | None = None

    @property
    def key(self) -> EntryKey:
        return EntryKind.COMMANDS, self.run

    @property
    def entry(self) -> CommandsEntry:
        return CommandsEntry(self.description, self.run, self.undo, self.store)


@dataclass(frozen=True)
class MakeDir:
    """A directory another program writes into (removed on uninstall when left empty)."""

    path: Path

    @property
    def key(self) -> EntryKey:
        return EntryKind.DIR, self.path


Step = WriteFile | EditBlock | MakeDir | RunCommands


# -- what is on disk, as data ----------------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    """What the steps' paths hold now: the bytes of each file that exists, and the
    directories that exist among the steps' directories and their parents (only up to the
    first that exists; the root always does)."""

    files: Mapping[Path, bytes] = field(default_factory=dict)
    dirs: frozenset[Path] = frozenset()

    @classmethod
    def observe(cls, steps: Iterable[Step]) -> Disk:
        """Read what `steps` would compare against (reads only)."""
        files: dict[Path, bytes] = {}
        dirs: set[Path] = set()
        for step in steps:
            if isinstance(step, RunCommands):
                continue
            directory = step.path
            if isinstance(step, WriteFile | EditBlock):
                content = read(step.path)
                if content is not None:
                    files[step.path] = content
                directory = step.path.parent
            dirs.add(next(path for path in (directory, *directory.parents) if path.is_dir()))
        return cls(files, frozenset(dirs))

    def is_dir(self, path: Path) -> bool:
        return path in self.dirs or path.parent == path


def missing_dirs(directory: Path, exists: Callable[[Path], bool] = Path.exists) -> list[Path]:
    """`directory` and those of its parents that do not exist, outermost first."""
    missing = []
    for path in (directory, *directory.parents):
        if exists(path):
            break
        missing.append(path)
    return missing[::-1]


# -- the changes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Undo:
    """Undo what an earlier install recorded and this plan no longer wants."""

    entry: FileEntry | BlockEntry | CommandsEntry


@dataclass(frozen=True)
class Record:
    """Record what is already as the plan wants it (nothing on disk changes)."""

    entry: FileEntry | BlockEntry


@dataclass(frozen=True)
class Write:
    """Write a file that is entirely ours (`previous` None: it does not exist yet), after
    creating `new_dirs` for it; then record it."""

    path: Path
    previous: bytes | None
    content: bytes
    mode: int
    new_dirs: tuple[Path, ...] = ()
    secret: bool = False

    @property
    def entry(self) -> FileEntry:
        return FileEntry(self.path, sha256(self.content))


@dataclass(frozen=True)
class Edit:
    """Rewrite a user's file with our block (recorded before, by a `Record`)."""

    path: Path
    previous: bytes | None
    content: bytes
    new_dirs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class CreateDir:
    """Create `new_dirs`, the last of which a `MakeDir` step wants."""

    new_dirs: tuple[Path, ...]


@dataclass(frozen=True)
class Run:
    """Run a step's commands; `record`: the entry to record before they run (None: the
    manifest has it from an earlier install)."""

    step: RunCommands
    record: CommandsEntry | None


Change = Undo | Record | Write | Edit | CreateDir | Run


def diff(steps: Sequence[Step], manifest: Manifest, disk: Disk) -> list[Change]:
    """The changes that bring `disk` and `manifest` to `steps` (see the module comment)."""
    changes: list[Change] = [Undo(entry) for entry in reversed(stale_entries(steps, manifest))]
    made: set[Path] = set()
    written: set[Path] = set()

    def new_dirs(directory: Path) -> tuple[Path, ...]:
        created = missing_dirs(directory, lambda path: path in made or disk.is_dir(path))
        made.update(created)
        return tuple(created)

    for step in steps:
        if isinstance(step, WriteFile):
            current = disk.files.get(step.path)
            if current != step.content:
                dirs = new_dirs(step.path.parent)
                changes.append(
                    Write(step.path, current, step.content, step.mode, dirs, step.secret)
                )
                written.add(step.path)
            elif manifest.get(step.key) != (record := FileEntry(step.path, sha256(current))):
                changes.append(Record(record))
        elif isinstance(step, EditBlock):
            current = disk.files.get(step.path)
            if current is None and not step.create:
                continue
            content, entry = _with_block(step, current, manifest)
            if manifest.get(step.key) is None:
                changes.append(Record(entry))
            if current != content:
                dirs = new_dirs(step.path.parent) if current is None else ()
                changes.append(Edit(step.path, current, content, dirs))
                written.add(step.path)
        elif isinstance(step, MakeDir):
            if not disk.is_dir(step.path) and step.path not in made:
                changes.append(CreateDir(new_dirs(step.path)))
        else:
            recorded = manifest.get(step.key)
            if recorded is None or any(path in written for path in step.depends_on):
                changes.append(Run(step, step.entry if recorded is None else None))
    return changes


def _with_block(
    step: EditBlock, current: bytes | None, manifest: Manifest
) -> tuple[bytes, BlockEntry]:
    """The file's bytes with our block, and the entry that records it: an earlier install's
    (what it replaced is what uninstall must put back), else this edit's."""
    text, record = insert_block(decode(current) if current is not None else "", step.block)
    entry = manifest.get(step.key)
    if not isinstance(entry, BlockEntry):
        entry = BlockEntry(step.path, current is None, record.separator, record.previous)
    return encode(text), entry


def stale_entries(
    steps: Sequence[Step], manifest: Manifest
) -> list[FileEntry | BlockEntry | CommandsEntry]:
    """What an earlier install did that this plan no longer wants (an option dropped, the CA
    replaced): undone first, so the machine ends up as if only this plan had been applied.
    Directories stay: they go with uninstall, once empty."""
    planned = {step.key for step in steps}
    return [
        entry
        for entry in manifest.entries
        if isinstance(entry, FileEntry | BlockEntry | CommandsEntry) and entry.key not in planned
    ]


# -- the dry run -----------------------------------------------------------------------------


def render(changes: Iterable[Change]) -> list[str]:
    """The changes as `--dry-run` shows them: each file to create or modify as a unified
    diff, each command to run or undo. Recording alone is not shown."""
    lines: list[str] = []
    for change in changes:
        if isinstance(change, Undo):
            if isinstance(change.entry, CommandsEntry):
                lines.append(f"undo ({change.entry.description}):")
                lines.extend(f"  $ {shlex.join(argv)}" for argv in change.entry.undo)
            else:
                lines.append(f"remove transcache's {change.entry.key[0]} from {change.entry.path}")
        elif isinstance(change, Write | Edit):
            lines.append(f"{'create' if change.previous is None else 'modify'} {change.path}")
            if isinstance(change, Write) and change.secret:
                lines.append("  (not shown: it holds credentials)")
                continue
            lines.extend(
                line.rstrip("\n")
                for line in difflib.unified_diff(
                    decode(change.previous or b"").splitlines(keepends=True),
                    decode(change.content).splitlines(keepends=True),
                    fromfile=str(change.path) if change.previous is not None else "/dev/null",
                    tofile=str(change.path),
                )
            )
        elif isinstance(change, CreateDir):
            lines.append(f"create directory {change.new_dirs[-1]}")
        elif isinstance(change, Run):
            lines.append(f"run ({change.step.description}):")
            lines.extend(f"  $ {shlex.join(argv)}" for argv in change.step.run)
    return lines


def describe(steps: Sequence[Step], manifest: Manifest) -> list[str]:
    """The plan as `--dry-run` prints it, against what the disk holds now."""
    return render(diff(steps, manifest, Disk.observe(steps)))


def needs_root(steps: Iterable[Step]) -> list[Argv]:
    """Commands of `steps` that run through sudo (shown before any of them runs)."""
    return [
        argv for s in steps if isinstance(s, RunCommands) for argv in s.run if argv[:1] == ("sudo",)
    ]
