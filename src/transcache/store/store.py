"""The store: metadata records (see `metadata`) naming content-addressed bodies (see `blobs`).

A body is published before the metadata naming it (temp file + rename for both), so a
metadata file only ever names a complete, fsynced body; a crash leaves at worst a temp file
(removed at the next start, once no live process holds its dir's lock) or metadata whose
blob is gone (a miss, removed when seen). Renames are atomic, so several transcache processes
can share one cache dir.

Everything read back is checked before use: metadata is validated whole when read
(`parse_record`), and a body is hashed once per process before its first use (`verified`).
Every method here that can fail on storage degrades: lookups return None, writes raise
OSError to the caller, which then passes the response through.

Threads: a Store belongs to one owner thread (the trio thread in the proxy), which alone
calls its methods and so alone changes its memory (metadata memo, small bodies, the blob
ledger, counters). The async methods run their slow file work in a worker thread that
returns values, and apply those on the owner thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from .blobs import Blob, BlobLedger, BodyWriter, Eviction, check_blob, evict_blobs, scan
from .counters import Counter, CounterBook
from .layout import (
    PROXY_NAME,
    Layout,
    TempDir,
    signature,
    write_private,
)
from .memo import RecordMemo
from .metadata import Entry, MetadataError, VaryIndex, parse_record
from .writer import Published, Publisher, record_entry

log = logging.getLogger("transcache.store")

# Memory kept to answer hits without re-reading: parsed metadata (`memo`), and the bytes of
# small bodies (content-addressed, so never stale).
SMALL_BODY_BYTES = 64 * 1024
SMALL_BODIES_TOTAL = 32 * 1024 * 1024
TOUCH_INTERVAL = 60.0
TOUCHED_ENTRIES = 100_000


class Store:
    def __init__(self, cache_dir: Path, max_size: int) -> None:
        self.layout = Layout(cache_dir)
        self.layout.create()
        self._tmp = TempDir(self.layout.tmp)
        size = sum(blob.size for blob in scan(self.layout.blobs))
        self.ledger = BlobLedger(max_size, size, self.layout.live_processes())
        self.counters = CounterBook(self.layout, self._tmp.path)
        self._memo = RecordMemo()
        self._touched: dict[str, float] = {}
        self._small_bodies: OrderedDict[str, bytes] = OrderedDict()
        self._small_bytes = 0
        # Entries in the store, for the proxy's gauges: None until counted (recount.py), then
        # kept up to date by this process's own publishes and removals and by recounts.
        self.entry_count: int | None = None
        self._publisher = Publisher(self.layout, self._tmp.path)

    @property
    def max_size(self) -> int:
        return self.ledger.max_size

    @max_size.setter
    def max_size(self, value: int) -> None:
        # The next commit over the new limit evicts.
        self.ledger.max_size = value

    @property
    def size(self) -> int:
        return self.ledger.size

    def close(self) -> None:
        self.flush_counters()
        self._tmp.close()

    def announce(self, url: str) -> None:
        """Say that a proxy at `url` uses this store, until `close` (which removes the temp
        dir holding the note; a crashed process's note goes with its stale temp dir)."""
        write_private(self._tmp.path / PROXY_NAME, json.dumps({"url": url}).encode())

    # -- metadata ----------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """The stored entry for `key`, if its metadata and body are both present."""
        record = self._record(key)
        return record if isinstance(record, Entry) else None

    def vary_index(self, key: str) -> VaryIndex | None:
        record = self._record(key)
        return record if isinstance(record, VaryIndex) else None

    def _record(self, key: str) -> Entry | VaryIndex | None:
        path = self.layout.meta_file(key)
        try:
            stat = os.stat(path)
        except OSError:
            self._memo.forget(key)
            return None
        memo = self._memo.lookup(key, signature(stat))
        if memo is not None:  # unchanged on disk since we last read or wrote it
            if isinstance(memo.record, Entry) and not memo.checked:
                if not body_present(memo.record):
                    self.remove(key)
                    return None
                memo.checked = True
            return memo.record
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("unreadable cache metadata %s (%s): treated as a miss", path, exc)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        if not isinstance(data, dict) or data.get("key") != key:
            return None  # a hash collision or a foreign file: not ours
        try:
            record = parse_record(data, self.layout.blobs)
        except MetadataError as exc:
            log.warning("cache metadata for %s has %s: removed", key, exc)
            self.remove(key)
            return None
        self._memo.remember(key, signature(stat), record, checked=True)
        if isinstance(record, Entry) and not body_present(record):
            self.remove(key)  # after `_remember`, so `remove` knows it was an entry
            return None
        return record

    def write_entry(self, entry: Entry) -> None:
        self._write_record(entry)

    def write_index(self, key: str, fields: tuple[str, ...]) -> None:
        self._write_record(VaryIndex(key, fields))

    def update_headers(self, entry: Entry) -> None:
        """Rewrite an entry's metadata (after a 304 refreshed it)."""
        self.write_entry(entry)

    def _write_record(self, record: Entry | VaryIndex) -> None:
        """Write `record` and remember it: the next lookup finds it unchanged on disk (one
        stat) without reading it back."""
        written, kept = self._publisher.records.write(record)
        self._memo.remember(record.key, kept, written)

    def remove(self, key: str) -> None:
        forgotten = self._memo.forget(key)
        with contextlib.suppress(OSError):
            self.layout.meta_path(key).unlink()
            if self.entry_count and isinstance(forgotten, Entry):
                self.entry_count -= 1

    # -- bodies ------------------------------------------------------------------------------

    def begin(self) -> BodyWriter:
        return BodyWriter(self._tmp.path / f"body-{secrets.token_hex(8)}", self.layout.blobs)

    async def commit(
        self, writer: BodyWriter, fields: Mapping[str, Any], index: VaryIndex | None = None
    ) -> Entry:
        """Publish the body, its metadata and `index` in a writer thread (see `writer`)."""
        return self._published(await self._publisher.commit(writer, fields, index))

    def publish(self, blob: Blob, fields: Mapping[str, Any]) -> Entry:
        """Account for a finished body and write the metadata naming it, on this thread."""
        return self._published(record_entry(blob, fields, self._publisher.records))

    def _published(self, published: Published) -> Entry:
        self.add_blob(published.blob)
        for record, kept in published.written:
            self._memo.remember(record.key, kept, record)
        if published.new:
            self.entry_count = (self.entry_count or 0) + 1
        return published.entry

    def add_blob(self, blob: Blob) -> None:
        """Account for a finished body (the owner's half of publishing it)."""
        self.ledger.added(blob)

    def touch(self, entry: Entry) -> None:
        """Mark the entry's body as recently used (LRU), at most once a minute per body:
        eviction needs recency, not every hit's timestamp."""
        now = time.monotonic()
        if now - self._touched.get(entry.digest, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
            return
        if len(self._touched) > TOUCHED_ENTRIES:
            self._touched.clear()
        self._touched[entry.digest] = now
        with contextlib.suppress(OSError):
            verified = self.ledger.is_verified(entry.digest, signature(entry.body_path.stat()))
            os.utime(entry.body_path)
            if verified:  # our own touch moved the mtime, not the bytes
                self.ledger.remember(entry.digest, signature(entry.body_path.stat()))

    def small_body(self, entry: Entry) -> bytes | None:
        """The whole body of a small entry, from memory after its first read (bodies are
        content-addressed, so a remembered one can never be out of date). None for large
        bodies. Raises OSError when the body is gone."""
        if entry.size > SMALL_BODY_BYTES:
            return None
        data = self._small_bodies.get(entry.digest)
        if data is not None:
            self._small_bodies.move_to_end(entry.digest)
            return data
        data = entry.body_path.read_bytes()
        if len(data) != entry.size:
            raise OSError(f"{entry.body_path} changed size")
        if hashlib.sha256(data).hexdigest() != entry.digest:
            self._discard_corrupt(entry)
            raise OSError(f"{entry.body_path} is corrupt")
        self._small_bodies[entry.digest] = data
        self._small_bytes += len(data)
        while self._small_bytes > SMALL_BODIES_TOTAL:
            _, dropped = self._small_bodies.popitem(last=False)
            self._small_bytes -= len(dropped)
        return data

    async def verified(self, entry: Entry) -> bool:
        """Whether the entry's body is intact: its sha256 is its digest. Each version of a
        blob file (inode, mtime, size) is hashed once per process; bodies this process stored
        were hashed as they arrived. A corrupt body is removed (False). A large body is
        hashed in a worker thread; `needs_hashing` says whether there is anything to do."""
        if not self.needs_hashing(entry):
            return True
        if entry.size <= SMALL_BODY_BYTES:
            try:
                self.small_body(entry)  # hashes what it reads
            except OSError:
                return False
            return True
        check = (entry.body_path, entry.digest, entry.size)
        try:
            hashed = await trio.to_thread.run_sync(check_blob, *check)
        except OSError:
            return False
        if hashed is None:
            self._discard_corrupt(entry)
            return False
        self.ledger.remember(entry.digest, hashed)
        return True

    def needs_hashing(self, entry: Entry) -> bool:
        """Whether `verified(entry)` would read the body, not just look it up (cheap)."""
        if entry.digest in self._small_bodies:
            return False  # hashed when it was read into memory
        try:
            return not self.ledger.is_verified(entry.digest, signature(os.stat(entry.body_path)))
        except OSError:
            return True  # gone: verified() finds out

    def _discard_corrupt(self, entry: Entry) -> None:
        log.warning("cached body %s is corrupt (its sha256 is not its name): removed", entry.url)
        with contextlib.suppress(OSError):
            entry.body_path.unlink()
            self.ledger.removed(entry.size)
        self.remove(entry.key)

    async def evict(self, target: int | None = None, *, over: int | None = None) -> int:
        """Delete least recently used bodies (in a worker thread) until the store holds at
        most `target` bytes (default: 90% of max_size); with `over`, only if it holds more
        than that. Either way the dir is scanned and its size recounted. Returns the bytes
        freed."""
        added_before = self.ledger.added_total
        goal = self.ledger.target() if target is None else target
        eviction, sharers = await trio.to_thread.run_sync(_look, self.layout, goal, over)
        # Bodies published meanwhile may have been missed by the scan: counting them again
        # at worst evicts a little early; missing them could overfill the disk.
        self.ledger.recount(eviction.remaining + self.ledger.added_total - added_before, sharers)
        return eviction.freed

    def over_limit(self) -> bool:
        return self.ledger.over_limit()

    # -- counters ----------------------------------------------------------------------------

    def count(self, name: Counter, amount: int = 1) -> None:
        self.counters.count(name, amount)

    def flush_counters(self) -> None:
        self.counters.flush()


def _look(layout: Layout, goal: int, over: int | None) -> tuple[Eviction, int]:
    """Evict (see evict_blobs), and count the processes sharing the dir: one scan's work."""
    return evict_blobs(layout.blobs, goal, over), layout.live_processes()


def body_present(entry: Entry) -> bool:
    """Whether the entry's body file is there, at its size."""
    try:
        size = entry.body_path.stat().st_size
    except OSError:
        return False  # the body was evicted or lost
    if size != entry.size:
        log.warning("cached body %s has the wrong size: removed", entry.body_path)
        return False
    return True


def announced_urls(layout: Layout) -> list[str]:
    """The URLs of the proxies that announced themselves on a cache dir (`Store.announce`;
    a crashed one's may linger until the next proxy starts)."""
    urls = []
    for path in layout.proxy_files():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            url = json.loads(path.read_bytes()).get("url")
            if isinstance(url, str):
                urls.append(url)
    return urls
