"""Where the store's files live: shared by the store and by cache archives.

Under the cache dir (versioned, sharded by hash prefix):

    v1/meta/ab/cd/<sha256(key)>     JSON: one entry, or one key's Vary index record
    v1/blobs/ab/cd/<sha256(body)>   the body bytes, exactly as received (never re-encoded)
    v1/tmp/<pid>-<random>/          one process's files in progress, and its lock file
    v1/tmp/<pid>-<random>/proxy.json  a running proxy's URL, so `cache stats` can ask it
    v1/stats.json                   counters shared by every process using the dir

A path is only ever built from a digest by `shard_path`, which refuses anything but 64
lowercase hex digits: a digest read from metadata or an archive could be `../../x`.
Directories are created 0700 and files 0600, whatever the umask: stored responses may answer
credentialed requests. A process's temp dir gets its final name only once it holds the dir's
lock, so a dir whose lock is free belongs to a process that is gone and may be removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import time
from enum import StrEnum
from pathlib import Path

LAYOUT = "v1"
STATS_NAME = "stats.json"
STATS_LOCK_NAME = "stats.json.lock"
PROXY_NAME = "proxy.json"
LOCK_NAME = "lock"
# Temp dirs are created under this prefix and renamed once locked; a staging dir is left
# alone this long (its process may be starting).
STAGING_PREFIX = ".new-"
STAGING_GRACE = 600.0
# Owner-only, whatever the umask: other local users must not read cached responses.
DIR_MODE = 0o700
FILE_MODE = 0o600
DIGEST = re.compile(r"[0-9a-f]{64}")

# What identifies one version of a file: (inode, mtime in ns, size).
Signature = tuple[int, int, int]


class Area(StrEnum):
    """The sharded directories, each holding files named by a sha256."""

    META = "meta"
    BLOBS = "blobs"


def valid_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST.fullmatch(value) is not None


def shard_path(root: Path, digest: str) -> Path:
    """Where the file named `digest` lives under `root` (`ab/cd/abcd...`): the one place a
    path is built from a digest, so it refuses anything but a sha256 hex digest. Raises
    ValueError."""
    if not valid_digest(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return root / digest[:2] / digest[2:4] / digest


def member_name(area: Area, digest: str) -> str:
    """A store file's name relative to the cache dir, as archives name their members."""
    return shard_path(Path(LAYOUT) / area, digest).as_posix()


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def signature(stat: os.stat_result) -> Signature:
    """A rewrite or a replacement of the file changes it."""
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


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


def replace_private(tmp_dir: Path, path: Path, data: bytes) -> Signature:
    """Make `data` the content of `path` at once (temp file in `tmp_dir`, then rename):
    readers, in this process or another, see the old file or the new one, never half.
    Returns the new file's signature, taken before the rename (a rename keeps it), so a
    replacement by another process right after ours cannot be mistaken for ours."""
    tmp = tmp_dir / f"new-{secrets.token_hex(8)}"
    write_private(tmp, data)
    written = signature(os.stat(tmp))
    os.replace(tmp, path)
    return written


class Layout:
    """The store's directories under one cache dir."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir / LAYOUT
        self.meta = self.root / Area.META
        self.blobs = self.root / Area.BLOBS
        self.tmp = self.root / "tmp"
        self.stats = self.root / STATS_NAME
        self.stats_lock = self.root / STATS_LOCK_NAME
        self._meta_root = str(self.meta)

    def meta_file(self, key: str) -> str:
        """Where `key`'s metadata lives. A plain string built without `shard_path`: this runs
        on every hit, pathlib's joins cost more than the stat, and a key digest is always a
        sha256 (it is computed here, never read)."""
        digest = key_digest(key)
        return f"{self._meta_root}/{digest[:2]}/{digest[2:4]}/{digest}"

    def meta_path(self, key: str) -> Path:
        return Path(self.meta_file(key))

    def proxy_files(self) -> list[Path]:
        """The files in which running proxies announce their URL (some may be gone)."""
        return sorted(self.tmp.glob(f"*/{PROXY_NAME}"))

    def live_processes(self) -> int:
        """How many processes use the cache dir: each holds a temp dir in `tmp` while it
        lives (the dirs of dead ones go at the next start; until then they count too)."""
        try:
            dirs = [path for path in self.tmp.iterdir() if path.is_dir()]
            return max(1, sum(not path.name.startswith(STAGING_PREFIX) for path in dirs))
        except OSError:
            return 1

    def create(self) -> None:
        for directory in (self.meta, self.blobs, self.tmp):
            make_private_dirs(directory)
        # A cache made before files were owner-only: shut it to other users at the top.
        for directory in (self.root, self.meta, self.blobs, self.tmp):
            os.chmod(directory, DIR_MODE)


class TempDir:
    """This process's own temp dir under `tmp`, locked while the process lives."""

    def __init__(self, tmp: Path) -> None:
        _clean_stale(tmp)
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        staging = tmp / f"{STAGING_PREFIX}{name}"
        staging.mkdir(DIR_MODE)
        self._lock_fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.path = tmp / name
        os.rename(staging, self.path)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)


def _clean_stale(tmp: Path) -> None:
    """Remove temp dirs of processes that are gone (their lock is free). Files beside them
    (the download claims, cache/claims.py) are not temp dirs: their owners sweep them."""
    for directory in tmp.iterdir():
        if not directory.is_dir():
            continue
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
