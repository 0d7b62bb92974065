"""Bodies: content-addressed blob files, written while hashed, and LRU eviction.

Publishing a body: append it to a temp file in this process's temp dir while hashing it,
fsync, then rename it to the blob path named by its sha256 (`BodyWriter.finish`). Identical
bodies share one blob. Eviction is least-recently-used by modification time (touched on every
hit) and runs while the proxy serves.

Thread ownership. Everything in this module except `BlobLedger` touches only files and
returns what it found (a `Blob`, a `Signature`, an `Eviction`); it may run in any thread, and
the proxy runs the slow parts (writing and hashing a body, fsync, an eviction scan) in trio
worker threads. A `BodyWriter` is used by one thread at a time: worker threads write its
batches and finish it, one after the other; `KnownDirs` is shared by the publishing threads
(a set's operations are atomic). The in-memory facts about blobs, `BlobLedger` (the bytes
stored, and which blob files this process has hashed), belong to the store's owner thread
(the trio thread in the proxy, the only thread in the CLI): they change only there, from the
values the workers returned. So there is no lock, and no count is lost to two threads adding
at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .layout import FILE_MODE, Signature, make_private_dirs, shard_path, signature

HASH_CHUNK = 1024 * 1024
# Without a target, eviction frees down to this share of the limit, so that it does not run
# again after every download.
EVICT_TO = 0.9
# Verification results remembered per body before the memory is cleared (then re-hashed).
VERIFIED_ENTRIES = 100_000
# Shard directories remembered as existing (two levels of 256: all of them fit).
KNOWN_DIRS = 2 * 256 * 256


@dataclass(frozen=True)
class Blob:
    """A published body. `created` is the signature of the blob file when this publish
    created it (its bytes hashed as they arrived), None when the same bytes were stored
    already (by whom, and whether they are still intact, is not known here)."""

    digest: str
    size: int
    created: Signature | None


@dataclass(frozen=True)
class BlobFile:
    path: Path
    size: int
    mtime: float


@dataclass(frozen=True)
class Eviction:
    freed: int
    remaining: int


class BodyWriter:
    """A body being stored: appended to a temp file and hashed as it streams. The file is
    created by the first write (or by `finish`), so starting a body costs no file system call
    on the thread that starts it."""

    def __init__(self, path: Path, blobs: Path) -> None:
        self.path = path
        self._blobs = blobs
        self._fd = -1
        self._hash = hashlib.sha256()
        self.written = 0
        self._staged: list[bytes] = []

    def _open(self) -> int:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        return self._fd

    def write(self, data: bytes | memoryview) -> None:
        fd = self._open()
        view = memoryview(data)
        while view:
            count = os.write(fd, view)
            self._hash.update(view[:count])
            self.written += count
            view = view[count:]

    def write_all(self, pieces: Iterable[bytes]) -> None:
        for piece in pieces:
            self.write(piece)

    def stage(self, pieces: list[bytes]) -> None:
        """The body's last bytes, written by `finish` (in the same worker call as the
        fsync). Only between writes, on the thread that owns the writer."""
        self._staged = pieces

    def duplicate_fd(self) -> int:
        """A descriptor of the temp file for readers (`os.pread`), theirs to close; it stays
        valid after the file is published or removed. Only between writes, on the thread
        that owns the writer. -1 before the first write."""
        return os.dup(self._fd) if self._fd >= 0 else -1

    def finish(self, dirs: KnownDirs | None = None) -> Blob:
        """fsync the body and publish it as the blob named by its digest. Raises OSError."""
        blob = self.finish_if(None, dirs)
        assert blob is not None
        return blob

    def finish_if(self, expected: str | None, dirs: KnownDirs | None = None) -> Blob | None:
        """Like `finish`, if the body's sha256 is `expected` (a body from an archive, checked
        against its name); otherwise discard it and return None. Raises OSError."""
        staged, self._staged = self._staged, []
        self.write_all(staged)
        fd = self._open()
        os.fsync(fd)
        stat = os.fstat(fd)
        os.close(fd)
        self._fd = -1
        digest = self._hash.hexdigest()
        if expected is not None and digest != expected:
            self.abort()
            return None
        path = shard_path(self._blobs, digest)
        (dirs or KnownDirs()).make(path.parent)
        if _publish_new(self.path, path):
            return Blob(digest, self.written, signature(stat))
        os.utime(path)  # the same bytes were stored already (maybe a moment ago, by a twin)
        return Blob(digest, self.written, None)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class KnownDirs:
    """Shard directories known to exist, so that publishing does not look for them every
    time. Shared by the store's publishing threads: set operations are atomic, and a directory
    made twice is harmless. Eviction removes blobs,
    never shard directories, so a directory once seen stays; if one is removed anyway (a
    cleared cache), the rename fails with ENOENT and `forget` makes the next publish look."""

    def __init__(self) -> None:
        self._seen: set[Path] = set()

    def make(self, path: Path) -> None:
        if path not in self._seen:
            make_private_dirs(path)
            if len(self._seen) > KNOWN_DIRS:
                self._seen.clear()
            self._seen.add(path)

    def forget(self) -> None:
        self._seen.clear()


def _publish_new(temp: Path, path: Path) -> bool:
    """Move `temp` to `path` unless a blob is there already; True when this call created it.
    A hard link is atomic about that (two writers of the same bytes at once: exactly one
    creates the blob, so its size is counted once); where links are not supported, a rename
    that may replace an identical blob."""
    try:
        os.link(temp, path)
    except FileExistsError:
        os.unlink(temp)
        return False
    except OSError:
        if path.exists():
            os.unlink(temp)
            return False
        os.replace(temp, path)
        return True
    os.unlink(temp)
    return True


def _sha256_of(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def check_blob(path: Path, digest: str, size: int) -> Signature | None:
    """The signature of the blob file at `path` if it holds `size` bytes whose sha256 is
    `digest`, else None. Raises OSError when it cannot be read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        stat = os.fstat(fd)  # what is hashed is what is remembered, even if replaced
        intact = stat.st_size == size and _sha256_of(fd) == digest
    finally:
        os.close(fd)
    return signature(stat) if intact else None


def scan(blobs: Path) -> list[BlobFile]:
    found = []
    for path in blobs.glob("*/*/*"):
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append(BlobFile(path, stat.st_size, stat.st_mtime))
    return found


def evict_lru(
    files: Iterable[BlobFile], target: int, remove: Callable[[Path], object] = os.unlink
) -> Eviction:
    """Remove the least recently used of `files` until they hold at most `target` bytes; a
    file that cannot be removed is passed over."""
    ordered = sorted(files, key=lambda blob: blob.mtime)
    total = sum(blob.size for blob in ordered)
    freed = 0
    for blob in ordered:
        if total - freed <= target:
            break
        try:
            remove(blob.path)
        except OSError:
            continue
        freed += blob.size
    return Eviction(freed, total - freed)


def evict_blobs(blobs: Path, target: int, over: int | None = None) -> Eviction:
    """Evict under the blob dir `blobs` down to `target` bytes, or with `over` only when
    they hold more than that (slow: run it in a worker)."""
    files = scan(blobs)
    if over is not None and (total := sum(blob.size for blob in files)) <= over:
        return Eviction(0, total)
    return evict_lru(files, target)


class BlobLedger:
    """What this process knows about the blobs: owned by the store's owner thread.

    Other processes on the cache dir add bodies this one does not count; it sees them only
    when it scans the dir again. So it scans again (`due_for_a_look`) once it has added its
    share of the room the last scan left: with N processes, together they add at most that
    room between two looks, and the cache stays within max_size (give or take the bodies
    that cross the line)."""

    def __init__(self, max_size: int, size: int, sharers: int = 1) -> None:
        self.max_size = max_size
        self.size = size
        # Bytes this process has added, ever: what an eviction's scan may have missed.
        self.added_total = 0
        self._added_at_scan = 0
        self._allowance = 0
        self.recount(size, sharers)
        # digest -> signature of the blob file whose bytes hashed to it in this process.
        self._verified: dict[str, Signature] = {}

    def added(self, blob: Blob) -> None:
        if blob.created is not None:
            self.size += blob.size
            self.added_total += blob.size
            # Hashed as it arrived: its first hit need not read it again.
            self.remember(blob.digest, blob.created)

    def removed(self, size: int) -> None:
        self.size -= size

    def recount(self, size: int, sharers: int = 1) -> None:
        """Set the total from a scan of the blob dir (which sees other processes' blobs),
        which `sharers` processes use (this one included)."""
        self.size = size
        self._added_at_scan = self.added_total
        self._allowance = max(0, self.max_size - size) // max(1, sharers)

    def over_limit(self) -> bool:
        return self.size > self.max_size

    def due_for_a_look(self) -> bool:
        """Over the limit by this process's count, or it has added its share of the room."""
        return self.over_limit() or self.added_total - self._added_at_scan > self._allowance

    def target(self) -> int:
        return int(self.max_size * EVICT_TO)

    def remember(self, digest: str, hashed: Signature) -> None:
        """Record that the blob file with this signature hashed to `digest`."""
        if len(self._verified) > VERIFIED_ENTRIES:
            self._verified.clear()
        self._verified[digest] = hashed

    def is_verified(self, digest: str, current: Signature) -> bool:
        return self._verified.get(digest) == current
