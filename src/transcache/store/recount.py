"""Keeping a store's size and entry count true while other processes share its cache dir.

Each process counts what it stores and removes itself. What the others store (the workers of
`run --workers N`, a service and an `exec`) it learns only from the disk, so its gauges, its
/stats.json and its eviction check would see part of the cache. `keep_counted` counts the
entries at start (the store counted its bytes when it opened), and then, while another
process uses the dir, recounts every RECOUNT_SECONDS in a worker thread: the blobs' sizes and
the entries' metadata files. A large cache takes a while to count; the next recount waits
long enough that counting takes at most RECOUNT_SHARE of one thread. What this process
stores during a count is added on top, so a figure is at worst a body high, never low;
between counts the others' last changes are missing.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import trio

from .blobs import scan
from .layout import Layout
from .store import Store

RECOUNT_SECONDS = 10.0
RECOUNT_SHARE = 0.02


async def keep_counted(store: Store) -> None:
    """Count the store's entries now (its bytes were counted when it opened), then entries
    and bytes again while others share it (until cancelled)."""
    bodies = False
    while True:
        started = trio.current_time()
        await recount(store, bodies=bodies)
        took = trio.current_time() - started
        bodies = True
        while True:
            await trio.sleep(max(RECOUNT_SECONDS, took / RECOUNT_SHARE))
            if await trio.to_thread.run_sync(store.layout.live_processes) > 1:
                break


async def recount(store: Store, *, bodies: bool = True) -> None:
    """Set the store's entry count, and with `bodies` its size, from the disk, plus what it
    stored meanwhile."""
    added, entries = store.ledger.added_total, store.entry_count or 0
    size, counted, sharers = await trio.to_thread.run_sync(_count, store.layout, bodies)
    if size is not None:
        store.ledger.recount(size + store.ledger.added_total - added, sharers)
    store.entry_count = counted + (store.entry_count or 0) - entries


def _count(layout: Layout, bodies: bool) -> tuple[int | None, int, int]:
    """Bytes of bodies (if asked), entries, and processes using the dir; any thread."""
    size = sum(blob.size for blob in scan(layout.blobs)) if bodies else None
    return size, count_entry_files(layout.meta), layout.live_processes()


def count_entry_files(meta: Path) -> int:
    """How many metadata files under `meta` are entries (not Vary indexes); any thread."""
    count = 0
    for path in meta.glob("*/*/*"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_bytes())
            count += isinstance(data, dict) and "digest" in data
    return count
