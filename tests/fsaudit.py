"""What code under test does to the file system, seen through `sys.addaudithook`: every file
it opens (and how), and every path it creates, renames, removes, links or changes.

An audit hook cannot be removed, so one is installed for the whole test process and records
only while a `recording()` block is open (from every thread: an in-process proxy serves from
its own). Paths are made absolute and normalised without touching the disk.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Audit events that change the file system, and which of their arguments are paths.
CHANGING_EVENTS = {
    "os.rename": (0, 1),  # os.replace raises it too
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.truncate": (0,),
    "shutil.rmtree": (0,),
}


@dataclass(frozen=True)
class FileEvent:
    event: str
    path: str
    writes: bool  # the event changes the file, or opens it for writing


@dataclass
class Recording:
    events: list[FileEvent] = field(default_factory=list)

    def writes_outside(self, root: Path) -> list[FileEvent]:
        inside = os.path.abspath(root) + os.sep
        return [e for e in self.events if e.writes and not e.path.startswith(inside)]

    def touching(self, path: Path) -> list[FileEvent]:
        """Every event, reading or writing, that names `path`."""
        target = os.path.abspath(path)
        return [e for e in self.events if e.path == target]


_lock = threading.Lock()
_active: list[Recording] = []
_installed = False


def _path(value: Any) -> str | None:
    if isinstance(value, int) or value is None:
        return None  # a file descriptor: its open was recorded
    try:
        return os.path.abspath(os.fsdecode(value))
    except TypeError:
        return None


def _opens_for_writing(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & WRITE_FLAGS)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _active:
        return
    if event == "open":
        path = _path(args[0])
        found = [FileEvent(event, path, _opens_for_writing(args[1], args[2]))] if path else []
    elif event in CHANGING_EVENTS:
        paths = (_path(args[i]) for i in CHANGING_EVENTS[event] if i < len(args))
        found = [FileEvent(event, p, True) for p in paths if p is not None]
    else:
        return
    with _lock:
        for recording in _active:
            recording.events.extend(found)


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    record = Recording()
    with _lock:
        _active.append(record)
    try:
        yield record
    finally:
        with _lock:
            _active.remove(record)
