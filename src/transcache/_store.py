"""The on-disk store: small JSON metadata files and content-addressed bodies.

Layout under the cache dir (versioned, sharded by hash prefix):

    v1/meta/ab/cd/<sha256(key)>     JSON: status, headers, times, body digest and size
    v1/blobs/ab/cd/<sha256(body)>   the body bytes, exactly as received (never re-encoded)
    v1/tmp/<pid>-<random>/          this process's bodies in progress, and its lock file
    v1/stats.json                   counters shared by every process using the dir

Publishing a body: write it into this process's tmp dir while hashing it, fsync, rename it to
its blob path, then write the metadata (temp file + rename). A metadata file therefore only
ever names a complete, fsynced body; a crash leaves at worst a temp file (removed at the next
start, once no live process holds its dir's lock) or a metadata file whose blob is gone (a
miss, removed when seen). Identical bodies share one blob. Renames are atomic, so several
transcache processes can share one cache dir.

Eviction is least-recently-used over blobs, by modification time (touched on every hit), and
runs while the proxy serves. Every method here that can fail on storage degrades: lookups
return None, writes raise OSError to the caller, which then passes the response through.

Everything read back is checked before use, since a cache dir can be restored from a tampered
archive or hit by bit rot: metadata is validated whole (a digest is exactly 64 lowercase hex
digits, and a path is only ever built from such a digest, by `shard_path`), and a body is
hashed once per process before its first use (`Store.verified`). Directories are created 0700
and files 0600, whatever the umask: stored responses may answer credentialed requests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._protocol import Headers

log = logging.getLogger("transcache.store")

LAYOUT = "v1"
LOCK_NAME = "lock"
STATS_NAME = "stats.json"
HASH_CHUNK = 1024 * 1024
# Memory kept to answer hits without re-reading: parsed metadata (checked against the file's
# stat on every use), and the bytes of small bodies (content-addressed, so never stale).
META_MEMO_ENTRIES = 20_000
SMALL_BODY_BYTES = 64 * 1024
SMALL_BODIES_TOTAL = 32 * 1024 * 1024
TOUCH_INTERVAL = 60.0
TOUCHED_ENTRIES = 100_000
# Temp dirs are created under this prefix and renamed once locked; a staging dir is left
# alone this long (its process may be starting).
STAGING_PREFIX = ".new-"
STAGING_GRACE = 600.0
# Owner-only, whatever the umask: other local users must not read cached responses.
DIR_MODE = 0o700
FILE_MODE = 0o600
DIGEST = re.compile(r"[0-9a-f]{64}")
# Verification results remembered per body before the memory is cleared (then re-hashed).
VERIFIED_ENTRIES = 100_000


def valid_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST.fullmatch(value) is not None


def shard_path(root: Path, digest: str) -> Path:
    """Where the file named `digest` lives under `root` (`ab/cd/abcd...`): the one place a
    path is built from a digest, so it refuses anything but a sha256 hex digest (a digest
    read from metadata could be `/etc/passwd` or `../../x`). Raises ValueError."""
    if not valid_digest(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return root / digest[:2] / digest[2:4] / digest


def make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each 0700 whatever the umask."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile
        os.chmod(directory, DIR_MODE)  # the umask may have taken bits away


def write_private(path: Path, data: bytes) -> None:
    """Write a new file (0600) that no one else has yet: a temp file about to be renamed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def metadata_problem(data: dict[str, Any]) -> str | None:
    """What makes a metadata record (an entry, or a key's Vary index record) unusable, or
    None. Pure: used on every record read from the store or from an archive."""
    if not isinstance(data.get("key"), str):
        return "no key"
    if "digest" not in data:
        vary = data.get("vary")
        if not isinstance(vary, list) or not all(isinstance(f, str) for f in vary):
            return "an index record without a list of Vary fields"
        return None
    if not valid_digest(data["digest"]):
        return f"a digest that is not a sha256: {data['digest']!r}"
    size = data.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"a bad size: {size!r}"
    return None


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    """What identifies one version of a file: a rewrite or a replacement changes it."""
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _sha256_of(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _encode_headers(headers: Headers) -> list[list[str]]:
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]


def _decode_headers(raw: list[list[str]]) -> Headers:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in raw]


@dataclass
class Entry:
    """A stored response: its head and where its body is."""

    key: str
    url: str
    status: int
    reason: bytes
    headers: Headers
    digest: str
    size: int
    request_time: float
    response_time: float
    body_path: Path
    kind: str = "http"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "url": self.url,
            "status": self.status,
            "reason": self.reason.decode("latin-1"),
            "headers": _encode_headers(self.headers),
            "digest": self.digest,
            "size": self.size,
            "request_time": self.request_time,
            "response_time": self.response_time,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class StoreStats:
    entries: int
    bytes: int
    counters: dict[str, int]


class BodyWriter:
    """A body being stored: appended to a temp file and hashed as it streams."""

    def __init__(self, store: Store, path: Path) -> None:
        self._store = store
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        self._hash = hashlib.sha256()
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            count = os.write(self._fd, view)
            self._hash.update(view[:count])
            self.written += count
            view = view[count:]

    def commit(self, entry_fields: dict[str, Any]) -> Entry:
        """fsync and publish the body, then its metadata. Raises OSError on failure."""
        digest = self._publish(None)
        assert digest is not None
        blob = shard_path(self._store.blobs, digest)
        entry = Entry(digest=digest, size=self.written, body_path=blob, **entry_fields)
        self._store.write_meta(entry.key, entry.to_json())
        return entry

    def publish_if(self, expected: str) -> bool:
        """fsync and publish the body as a blob without metadata, if its sha256 is `expected`
        (a body from an archive, checked against its name); otherwise discard it. Raises
        OSError on failure."""
        return self._publish(expected) is not None

    def _publish(self, expected: str | None) -> str | None:
        """Make the body a blob named by its digest (returned); None, and nothing published,
        when it is not the `expected` one."""
        os.fsync(self._fd)
        written = os.fstat(self._fd)
        os.close(self._fd)
        self._fd = -1
        digest = self._hash.hexdigest()
        if expected is not None and digest != expected:
            self.abort()
            return None
        blob = shard_path(self._store.blobs, digest)
        make_private_dirs(blob.parent)
        if blob.exists():
            os.unlink(self.path)  # same bytes already stored
            os.utime(blob)
        else:
            os.replace(self.path, blob)
            self._store.size += self.written
            # Hashed as it arrived: its first hit need not read it again.
            self._store._remember_verified(digest, written)
        return digest

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class Store:
    def __init__(self, cache_dir: Path, max_size: int) -> None:
        self.root = cache_dir / LAYOUT
        self.meta = self.root / "meta"
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self._meta_root = str(self.meta)
        self.max_size = max_size
        for directory in (self.meta, self.blobs, self.tmp):
            make_private_dirs(directory)
        # A cache made before files were owner-only: shut it to other users at the top.
        for directory in (self.root, self.meta, self.blobs, self.tmp):
            os.chmod(directory, DIR_MODE)
        self._clean_stale_tmp()
        # The dir gets its final name only once locked, so no other process starting now
        # can take it for a dead one's.
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        staging = self.tmp / f"{STAGING_PREFIX}{name}"
        staging.mkdir(DIR_MODE)
        self._lock_fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._own_tmp = self.tmp / name
        os.rename(staging, self._own_tmp)
        self.size = sum(size for _, size, _ in self._blobs())
        self._pending: dict[str, int] = {}
        # key -> (metadata file's inode, mtime, size; its JSON; the Entry built from it)
        self._memo: OrderedDict[str, tuple[tuple[int, int, int], dict[str, Any], Entry | None]]
        self._memo = OrderedDict()
        self._touched: dict[str, float] = {}
        self._small_bodies: OrderedDict[str, bytes] = OrderedDict()
        self._small_bytes = 0
        # digest -> signature of the blob file whose bytes hashed to it in this process.
        self._verified: dict[str, tuple[int, int, int]] = {}

    def close(self) -> None:
        self.flush_counters()
        shutil.rmtree(self._own_tmp, ignore_errors=True)
        os.close(self._lock_fd)

    def _clean_stale_tmp(self) -> None:
        """Remove temp dirs of processes that are gone (their lock is free)."""
        for directory in self.tmp.iterdir():
            if directory.name.startswith(STAGING_PREFIX):
                # A process between creating and locking its dir (leave it), or one that died
                # right there long ago (remove it).
                with contextlib.suppress(OSError):
                    if time.time() - directory.stat().st_mtime > STAGING_GRACE:
                        shutil.rmtree(directory, ignore_errors=True)
                continue
            try:
                fd = os.open(directory / LOCK_NAME, os.O_RDWR)
            except OSError:
                shutil.rmtree(directory, ignore_errors=True)  # never was a live one's
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live process is using it
            finally:
                os.close(fd)
            shutil.rmtree(directory, ignore_errors=True)

    # -- metadata ----------------------------------------------------------------------------

    def _meta_path(self, key: str) -> str:
        # A plain string: this runs twice per hit, and pathlib's joins cost more than the stat.
        digest = key_digest(key)
        return f"{self._meta_root}/{digest[:2]}/{digest[2:4]}/{digest}"

    def read_meta(self, key: str) -> dict[str, Any] | None:
        """The metadata stored under `key` (do not mutate it: it may be shared)."""
        path = self._meta_path(key)
        try:
            stat = os.stat(path)
        except OSError:
            self._memo.pop(key, None)
            return None
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        memo = self._memo.get(key)
        if memo is not None and memo[0] == signature:
            self._memo.move_to_end(key)
            return memo[1]
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
        problem = metadata_problem(data)
        if problem is not None:
            log.warning("cache metadata for %s has %s: removed", key, problem)
            self.remove(key)
            return None
        self._memo[key] = (signature, data, None)
        if len(self._memo) > META_MEMO_ENTRIES:
            self._memo.popitem(last=False)
        return data

    def write_meta(self, key: str, data: dict[str, Any]) -> None:
        path = shard_path(self.meta, key_digest(key))
        make_private_dirs(path.parent)
        tmp = self._own_tmp / f"meta-{secrets.token_hex(8)}"
        write_private(tmp, json.dumps(data, separators=(",", ":")).encode())
        os.replace(tmp, path)
        self._memo.pop(key, None)

    def remove(self, key: str) -> None:
        self._memo.pop(key, None)
        with contextlib.suppress(OSError):
            shard_path(self.meta, key_digest(key)).unlink()

    def get(self, key: str) -> Entry | None:
        """The stored entry for `key`, if its metadata and body are both present."""
        data = self.read_meta(key)
        if data is None or "digest" not in data:
            return None
        memo = self._memo.get(key)
        if memo is not None and memo[1] is data and memo[2] is not None:
            return memo[2]  # unchanged on disk since we last checked it whole
        try:
            blob = shard_path(self.blobs, data["digest"])
            entry = Entry(
                key=key,
                url=data["url"],
                status=int(data["status"]),
                reason=data["reason"].encode("latin-1"),
                headers=_decode_headers(data["headers"]),
                digest=data["digest"],
                size=int(data["size"]),
                request_time=float(data["request_time"]),
                response_time=float(data["response_time"]),
                body_path=blob,
                kind=data.get("kind", "http"),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("malformed cache metadata for %s: removed", key)
            self.remove(key)
            return None
        try:
            stat = blob.stat()
        except OSError:
            self.remove(key)  # the body was evicted or lost
            return None
        if stat.st_size != entry.size:
            log.warning("cached body %s has the wrong size: removed", blob)
            self.remove(key)
            return None
        if memo is not None and memo[1] is data:
            self._memo[key] = (memo[0], data, entry)
        return entry

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
            verified = self._verified.get(entry.digest) == _signature(entry.body_path.stat())
            os.utime(entry.body_path)
            if verified:  # our own touch moved the mtime, not the bytes
                self._remember_verified(entry.digest, entry.body_path.stat())

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

    def verified(self, entry: Entry) -> bool:
        """Whether the entry's body is intact: its sha256 is its digest. Each version of a
        blob file (inode, mtime, size) is hashed once per process; bodies this process stored
        were hashed as they arrived. A corrupt body is removed (False). Reads the whole body
        the first time: see `needs_hashing` to keep that off an event loop."""
        if not self.needs_hashing(entry):
            return True
        if entry.size <= SMALL_BODY_BYTES:
            try:
                self.small_body(entry)  # hashes what it reads
            except OSError:
                return False
            return True
        try:
            fd = os.open(entry.body_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            stat = os.fstat(fd)  # what is hashed is what is remembered, even if replaced
            intact = stat.st_size == entry.size and _sha256_of(fd) == entry.digest
        except OSError:
            return False
        finally:
            os.close(fd)
        if not intact:
            self._discard_corrupt(entry)
            return False
        self._remember_verified(entry.digest, stat)
        return True

    def needs_hashing(self, entry: Entry) -> bool:
        """Whether `verified(entry)` would read the body, not just look it up (cheap)."""
        if entry.digest in self._small_bodies:
            return False  # hashed when it was read into memory
        verified = self._verified.get(entry.digest)
        try:
            return verified is None or verified != _signature(os.stat(entry.body_path))
        except OSError:
            return True  # gone: verified() finds out

    def _remember_verified(self, digest: str, stat: os.stat_result) -> None:
        """Record that the blob file with this stat hashed to `digest`. Called from worker
        threads too: a plain dict assignment."""
        if len(self._verified) > VERIFIED_ENTRIES:
            self._verified.clear()
        self._verified[digest] = _signature(stat)

    def _discard_corrupt(self, entry: Entry) -> None:
        log.warning("cached body %s is corrupt (its sha256 is not its name): removed", entry.url)
        with contextlib.suppress(OSError):
            entry.body_path.unlink()
            self.size -= entry.size
        self.remove(entry.key)

    def update_headers(self, entry: Entry) -> None:
        """Rewrite an entry's metadata (after a 304 refreshed it)."""
        self.write_meta(entry.key, entry.to_json())

    # -- bodies ------------------------------------------------------------------------------

    def begin(self) -> BodyWriter:
        return BodyWriter(self, self._own_tmp / f"body-{secrets.token_hex(8)}")

    def _blobs(self) -> Iterator[tuple[Path, int, float]]:
        for path in self.blobs.glob("*/*/*"):
            try:
                stat = path.stat()
            except OSError:
                continue
            yield path, stat.st_size, stat.st_mtime

    def evict(self, target: int | None = None) -> int:
        """Delete least recently used bodies until the store holds at most `target` bytes
        (default: 90% of max_size). Returns the bytes freed."""
        if target is None:
            target = int(self.max_size * 0.9)
        blobs = sorted(self._blobs(), key=lambda item: item[2])
        total = sum(size for _, size, _ in blobs)
        freed = 0
        for path, size, _ in blobs:
            if total - freed <= target:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                freed += size
        self.size = total - freed
        return freed

    def over_limit(self) -> bool:
        return self.size > self.max_size

    # -- maintenance (the `cache` commands) --------------------------------------------------

    def entries(self) -> Iterator[Entry]:
        for path in self.meta.glob("*/*/*"):
            try:
                data = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and "digest" in data and isinstance(data.get("key"), str):
                entry = self.get(data["key"])
                if entry is not None:
                    yield entry

    def prune(self) -> tuple[int, int]:
        """Evict down to the size limit and drop metadata whose body is gone.
        Returns (entries removed, bytes freed)."""
        freed = self.evict(self.max_size) if self.over_limit() else 0
        removed = 0
        for path in self.meta.glob("*/*/*"):
            try:
                data = json.loads(path.read_bytes())
                digest = data.get("digest")
                if digest is not None and not shard_path(self.blobs, digest).exists():
                    path.unlink()
                    removed += 1
            except (OSError, ValueError, AttributeError):
                with contextlib.suppress(OSError):
                    path.unlink()
                removed += 1
        return removed, freed

    def verify(self) -> tuple[int, list[Path]]:
        """Re-hash every body; delete those whose bytes do not match their name.
        Returns (bodies checked, bodies removed)."""
        checked, removed = 0, []
        for path, _, _ in list(self._blobs()):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                digest = _sha256_of(fd)
            except OSError:
                continue
            finally:
                os.close(fd)
            checked += 1
            if digest != path.name:
                with contextlib.suppress(OSError):
                    size = path.stat().st_size
                    path.unlink()
                    self.size -= size
                removed.append(path)
        self.prune()
        return checked, removed

    def clear(self) -> None:
        for directory in (self.meta, self.blobs):
            shutil.rmtree(directory, ignore_errors=True)
            make_private_dirs(directory)
        self.size = 0

    # -- counters ----------------------------------------------------------------------------

    def count(self, name: str, amount: int = 1) -> None:
        self._pending[name] = self._pending.get(name, 0) + amount

    def flush_counters(self) -> None:
        """Add this process's counts to stats.json (under a lock: processes share it)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            with self._locked_stats() as counters:
                for name, amount in pending.items():
                    current = counters.get(name, 0)
                    counters[name] = (current if isinstance(current, int) else 0) + amount
        except OSError as exc:
            log.warning("cannot update %s: %s", self.root / STATS_NAME, exc)

    @contextlib.contextmanager
    def _locked_stats(self) -> Iterator[dict[str, int]]:
        path = self.root / STATS_NAME
        fd = os.open(self.root / (STATS_NAME + ".lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                counters = json.loads(path.read_bytes())
                if not isinstance(counters, dict):
                    counters = {}
            except (OSError, ValueError):
                counters = {}
            yield counters
            tmp = self._own_tmp / f"stats-{secrets.token_hex(8)}"
            write_private(tmp, json.dumps(counters, sort_keys=True).encode())
            os.replace(tmp, path)
        finally:
            os.close(fd)

    def stats(self) -> StoreStats:
        self.flush_counters()
        try:
            counters = json.loads((self.root / STATS_NAME).read_bytes())
        except (OSError, ValueError):
            counters = {}
        blobs = list(self._blobs())
        entries = sum(1 for _ in self.entries())
        return StoreStats(entries, sum(size for _, size, _ in blobs), counters)


def now() -> float:
    return time.time()
