"""What `transcache cache ...` does to a store: list, prune, verify, clear and count it.

These run on the store's owner thread (the CLI's only thread) and do their file work inline.
The long ones report their progress through a `Progress` callback: (done, total), in units
of the command's choosing, called before each unit and once at the end, with done == total.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .blobs import check_blob, evict_blobs, scan
from .layout import make_private_dirs, shard_path
from .metadata import Entry
from .store import Store

Progress = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
    """A Progress that reports nowhere."""


@dataclass(frozen=True)
class StoreStats:
    entries: int
    bytes: int
    counters: dict[str, int]


def entries(store: Store) -> Iterator[Entry]:
    """Every entry whose metadata and body are present."""
    for path in store.layout.meta.glob("*/*/*"):
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "digest" in data and isinstance(data.get("key"), str):
            entry = store.get(data["key"])
            if entry is not None:
                yield entry


def prune(store: Store, progress: Progress = no_progress) -> tuple[int, int]:
    """Evict down to the size limit and drop metadata whose body is gone.
    Returns (entries removed, bytes freed); progress counts metadata files checked."""
    freed = 0
    if store.over_limit():
        eviction = evict_blobs(store.layout.blobs, store.max_size)
        store.ledger.recount(eviction.remaining)
        freed = eviction.freed
    removed = 0
    records = list(store.layout.meta.glob("*/*/*"))
    for done, path in enumerate(records):
        progress(done, len(records))
        try:
            data = json.loads(path.read_bytes())
            digest = data.get("digest")
            if digest is not None and not shard_path(store.layout.blobs, digest).exists():
                path.unlink()
                removed += 1
        except (OSError, ValueError, AttributeError):
            with contextlib.suppress(OSError):
                path.unlink()
            removed += 1
    progress(len(records), len(records))
    return removed, freed


def purge(store: Store, pattern: str) -> list[str]:
    """Drop the entries whose URL matches `pattern` (a URL, or a shell pattern on it), so
    the next request asks the origin: a release published a minute ago shows at once.
    Their bodies stay until eviction (another entry may share them). Returns the URLs."""
    purged = []
    for entry in list(entries(store)):
        if entry.url == pattern or fnmatch.fnmatchcase(entry.url, pattern):
            store.remove(entry.key)
            purged.append(entry.url)
    return purged


def verify(store: Store, progress: Progress = no_progress) -> tuple[int, list[Path]]:
    """Re-hash every body; delete those whose bytes do not match their name, and then the
    metadata naming them. Returns (bodies checked, bodies removed); progress counts bytes
    hashed."""
    checked, removed = 0, []
    blobs = scan(store.layout.blobs)
    total, hashed = sum(blob.size for blob in blobs), 0
    for blob in blobs:
        progress(hashed, total)
        hashed += blob.size
        try:
            intact = check_blob(blob.path, blob.path.name, blob.size) is not None
        except OSError:
            continue  # gone meanwhile
        checked += 1
        if not intact:
            with contextlib.suppress(OSError):
                blob.path.unlink()
                store.ledger.removed(blob.size)
            removed.append(blob.path)
    progress(total, total)
    prune(store)
    return checked, removed


def clear(store: Store) -> None:
    """Remove every entry and body (counters stay)."""
    for directory in (store.layout.meta, store.layout.blobs):
        shutil.rmtree(directory, ignore_errors=True)
        make_private_dirs(directory)
    store.ledger.recount(0)


def stats(store: Store) -> StoreStats:
    total = sum(blob.size for blob in scan(store.layout.blobs))
    return StoreStats(sum(1 for _ in entries(store)), total, store.counters.read())
