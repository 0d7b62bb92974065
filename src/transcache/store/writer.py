"""Publishing a downloaded body, in the store's writer threads.

Everything a publish does to files happens here, in one call: append the body's last bytes
(`BodyWriter.stage`), fsync, rename the body to its blob path, write the metadata naming it
and, for a response that varies, the Vary index naming that. `Store.commit` runs it in at
most WRITERS worker threads at once (its writer limiter), off the event loop. Not one: a
publish waits for its fsync, and one thread made every small miss queue behind the fsyncs
of all the others, so the next request for a page waited for a backlog of publishes
(docs/performance.md). The `KnownDirs` memo is shared by those threads; a set's operations
are atomic, and a directory made twice is harmless. When another process clears the cache,
the first publish after it fails (a pass-through, as for any storage error) and the memo is
forgotten. It returns what it did (`Published`); the store's owner thread applies that to
the store's memory.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .blobs import Blob, BodyWriter, KnownDirs
from .layout import Layout, Signature, make_private_dirs, replace_private, shard_path
from .metadata import Entry, VaryIndex

# A record written, with the signature of its file (for the store's metadata memo).
Written = tuple[Entry | VaryIndex, Signature]


# Publishes at once: enough that fsyncs overlap, few enough to leave trio's other worker
# threads (batch writes, hashing) room.
WRITERS = 4


@dataclass(frozen=True)
class Published:
    blob: Blob
    entry: Entry
    new: bool  # no metadata was stored under the entry's key before
    written: tuple[Written, ...]  # the metadata written


@dataclass(frozen=True)
class Records:
    """Where metadata is written: the store's layout and temp dir, and, for the writer
    thread's own use, the shard directories known to exist (None: look every time)."""

    layout: Layout
    tmp: Path
    dirs: KnownDirs | None = None

    def write(self, record: Entry | VaryIndex) -> Written:
        path = self.layout.meta_path(record.key)
        if self.dirs is None:
            make_private_dirs(path.parent)
        else:
            self.dirs.make(path.parent)
        data = json.dumps(record.to_json(), separators=(",", ":")).encode()
        return record, replace_private(self.tmp, path, data)


def publish_body(
    writer: BodyWriter, fields: Mapping[str, Any], index: VaryIndex | None, records: Records
) -> Published:
    """Publish the body (its staged bytes written first), its metadata (`fields`: the
    entry's other fields) and `index`. Raises OSError; a shard directory that vanished (the
    cache was cleared meanwhile) is looked for again by the next publish."""
    try:
        published = record_entry(writer.finish(records.dirs), fields, records)
        if index is None:
            return published
        written = records.write(index)
    except FileNotFoundError:
        if records.dirs is not None:
            records.dirs.forget()
        raise
    return dataclasses.replace(published, written=(*published.written, written))


def record_entry(blob: Blob, fields: Mapping[str, Any], records: Records) -> Published:
    """Write the metadata naming a published body (`fields`: the entry's other fields)."""
    path = shard_path(records.layout.blobs, blob.digest)
    entry = Entry(digest=blob.digest, size=blob.size, body_path=path, **fields)
    new = not records.layout.meta_path(entry.key).exists()
    return Published(blob, entry, new, (records.write(entry),))


class Publisher:
    """The store's publishing: metadata `records` for its owner thread, and `commit`, which
    runs `publish_body` in at most WRITERS worker threads at once."""

    def __init__(self, layout: Layout, tmp: Path) -> None:
        self.records = Records(layout, tmp)
        self._threaded = Records(layout, tmp, KnownDirs())
        self._limiter = trio.CapacityLimiter(WRITERS)

    async def commit(
        self, writer: BodyWriter, fields: Mapping[str, Any], index: VaryIndex | None
    ) -> Published:
        return await trio.to_thread.run_sync(
            publish_body, writer, fields, index, self._threaded, limiter=self._limiter
        )
