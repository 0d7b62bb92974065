"""The install manifest ($DATA/install.json): what installs did, in the order they did it, and
the settings of the last one. Uninstall walks it backwards.

Each entry is one of four typed records, read from JSON and checked field by field in
`Manifest.load`, so code past that point never meets a missing key or a wrong type: a
damaged manifest is refused there with an InstallError naming the entry.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blocks import BlockRecord
from .errors import InstallError
from .files import write_atomically
from .runner import Argv

MANIFEST_VERSION = 1
MANIFEST_MODE = 0o644


class EntryKind(enum.StrEnum):
    FILE = "file"
    BLOCK = "block"
    COMMANDS = "commands"
    DIR = "dir"


# What identifies an entry, and the plan step that wants it: its kind and its path, or for
# commands the commands themselves.
EntryKey = tuple[EntryKind, Path | tuple[Argv, ...]]


@dataclass(frozen=True)
class FileEntry:
    """A file that is entirely ours, with the sha256 of what we wrote (uninstall keeps the
    file when it was changed since)."""

    path: Path
    sha256: str

    @property
    def key(self) -> EntryKey:
        return EntryKind.FILE, self.path

    def to_json(self) -> dict[str, Any]:
        return {"kind": EntryKind.FILE, "path": str(self.path), "sha256": self.sha256}


@dataclass(frozen=True)
class BlockEntry:
    """Our block in a user's file, with what inserting it changed (see blocks.py); `created`:
    the file did not exist before (it is deleted again when left empty)."""

    path: Path
    created: bool
    separator: str
    previous: str | None

    @property
    def key(self) -> EntryKey:
        return EntryKind.BLOCK, self.path

    @property
    def record(self) -> BlockRecord:
        return BlockRecord(self.separator, self.previous)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": EntryKind.BLOCK,
            "path": str(self.path),
            "created": self.created,
            "separator": self.separator,
            "previous": self.previous,
        }


@dataclass(frozen=True)
class CommandsEntry:
    """Commands that changed state elsewhere, with the commands that undo them; `store`: the
    trust store they touched, if any."""

    description: str
    run: tuple[Argv, ...]
    undo: tuple[Argv, ...]
    store: str | None = None

    @property
    def key(self) -> EntryKey:
        return EntryKind.COMMANDS, self.run

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": EntryKind.COMMANDS,
            "description": self.description,
            "run": [list(argv) for argv in self.run],
            "undo": [list(argv) for argv in self.undo],
            "store": self.store,
        }


@dataclass(frozen=True)
class DirEntry:
    """A directory an install created (uninstall removes it once it is empty)."""

    path: Path

    @property
    def key(self) -> EntryKey:
        return EntryKind.DIR, self.path

    def to_json(self) -> dict[str, Any]:
        return {"kind": EntryKind.DIR, "path": str(self.path)}


Entry = FileEntry | BlockEntry | CommandsEntry | DirEntry


@dataclass
class Manifest:
    """What installs did, in order, and the settings of the last one."""

    entries: list[Entry] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """The manifest at `path`; an empty one when there is none."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise InstallError(f"cannot read the install manifest {path}: {exc}") from exc
        try:
            return cls.from_json(data)
        except ValueError as exc:
            raise InstallError(f"{path}: {exc}") from exc

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        if not isinstance(data, dict):
            raise ValueError("the install manifest is not a JSON object")
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"unknown manifest version {data.get('version')!r}")
        entries, settings = data.get("entries"), data.get("settings", {})
        if not isinstance(entries, list) or not isinstance(settings, dict):
            raise ValueError("damaged manifest: no list of entries, or settings not an object")
        parsed = []
        for number, entry in enumerate(entries, 1):
            try:
                parsed.append(entry_from_json(entry))
            except ValueError as exc:
                raise ValueError(f"damaged manifest entry {number}: {exc}") from exc
        return cls(parsed, settings)

    def save(self, path: Path) -> None:
        data = {
            "version": MANIFEST_VERSION,
            "settings": self.settings,
            "entries": [entry.to_json() for entry in self.entries],
        }
        write_atomically(path, (json.dumps(data, indent=2) + "\n").encode(), MANIFEST_MODE)

    def get(self, key: EntryKey) -> Entry | None:
        return next((entry for entry in self.entries if entry.key == key), None)

    def record(self, entry: Entry) -> None:
        """Add `entry`, or put it in the place of the entry with its key."""
        for index, existing in enumerate(self.entries):
            if existing.key == entry.key:
                self.entries[index] = entry
                return
        self.entries.append(entry)

    @property
    def stores(self) -> list[str]:
        return [e.store for e in self.entries if isinstance(e, CommandsEntry) and e.store]


def entry_from_json(data: object) -> Entry:
    """One entry as `to_json` wrote it; ValueError names what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        kind = EntryKind(_text(data, "kind"))
    except ValueError as exc:
        raise ValueError(f"unknown kind {data.get('kind')!r}") from exc
    if kind is EntryKind.FILE:
        return FileEntry(Path(_text(data, "path")), _text(data, "sha256"))
    if kind is EntryKind.BLOCK:
        if not isinstance(data.get("created"), bool):
            raise ValueError("'created' is not true or false")
        previous = data.get("previous")
        if previous is not None:
            previous = _text(data, "previous")
        return BlockEntry(
            Path(_text(data, "path")), data["created"], _text(data, "separator"), previous
        )
    if kind is EntryKind.COMMANDS:
        store = data.get("store")
        return CommandsEntry(
            _text(data, "description"),
            _commands(data, "run"),
            _commands(data, "undo"),
            None if store is None else _text(data, "store"),
        )
    return DirEntry(Path(_text(data, "path")))


def _text(data: Mapping[str, object], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is not a string")
    return value


def _commands(data: Mapping[str, object], name: str) -> tuple[Argv, ...]:
    value = data.get(name)
    if not isinstance(value, list) or not all(
        isinstance(argv, list) and argv and all(isinstance(arg, str) for arg in argv)
        for argv in value
    ):
        raise ValueError(f"{name!r} is not a list of commands")
    return tuple(tuple(argv) for argv in value)
