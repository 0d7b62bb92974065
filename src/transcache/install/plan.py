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
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shlex
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


def _make_parents(path: Path, manifest: Manifest) -> None:
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        directory.mkdir()
        manifest.entries.append({"kind": "dir", "path": str(directory)})


def apply(steps: Sequence[Step], manifest: Manifest, runner: Runner, save: Path) -> Outcome:
    """Bring the machine to `steps`, recording into `manifest` (saved to `save` after every
    change, so an interrupted install can still be undone)."""
    outcome = Outcome()
    for entry in reversed(stale_entries(steps, manifest)):
        _undo_entry(entry, runner, outcome)
        manifest.entries.remove(entry)
        manifest.save(save)
    written: set[Path] = set()
    for step in steps:
        if isinstance(step, WriteFile):
            if _read(step.path) == step.content:
                if manifest.find("file", "path", str(step.path)) is None:
                    manifest.entries.append(_file_entry(step.path, step.content))
                continue
            _make_parents(step.path, manifest)
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
                _make_parents(step.path, manifest)
                step.path.write_bytes(new)
            else:
                _write_in_place(step.path, new)
            written.add(step.path)
            outcome.changed.append(f"updated {step.path}")
        elif isinstance(step, MakeDir):
            if step.path.is_dir():
                continue
            _make_parents(step.path / "-", manifest)
            outcome.changed.append(f"created {step.path}")
        else:
            if not _commands_due(step, manifest, written):
                continue
            # Recorded before running: commands that fail half-way are still undone.
            if manifest.find("commands", "run", [list(a) for a in step.run]) is None:
                manifest.entries.append(
                    {
                        "kind": "commands",
                        "description": step.description,
                        "run": [list(a) for a in step.run],
                        "undo": [list(a) for a in step.undo],
                        "store": step.store,
                    }
                )
                manifest.save(save)
            for argv in step.run:
                runner.run(argv)
            outcome.changed.append(step.description)
        manifest.save(save)
    manifest.save(save)
    return outcome


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
        try:
            path.rmdir()
        except OSError:
            pass  # not empty: something else lives there now


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
