"""Single flight across processes: the workers of one `transcache run --workers N` (and any
other proxy on the same cache dir) download a key once.

A download claims its key with an exclusive `flock` on `v1/tmp/flight-<key digest>`, taken
without blocking. A process that finds the key claimed polls the lock from the event loop
(never blocking it) until it is free, then looks the key up again: a hit when the holder
published, a miss it fetches itself when the holder gave up. It waits PATIENCE_SECONDS at
most, then fetches the key itself. A holder that dies loses its lock
to the kernel, so nobody waits for a dead download. The holder unlinks the file before it
unlocks; a claimer that locked a file unlinked meanwhile (its inode is no longer at the path)
tries again, so two claimers never hold two different files for one key. The file of a
holder that died stays until the key is claimed again, or until the next process starts on
the cache dir and sweeps such files away, the same way.

Owned by the trio thread, like the downloads that use it. This is the second level: within a
process the flights map (`Downloads`) already collapses requests once this process downloads
a key, so only its first request for the key claims it here. Requests that arrive while
another process holds the key each wait on the lock themselves (a failed flock every
POLL_SECONDS each: cheap, and they are few).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

import trio

from ..store.layout import FILE_MODE, key_digest

log = logging.getLogger("transcache.cache")

CLAIM_PREFIX = "flight-"
# How often a process waiting for another's download checks whether it ended. Downloads take
# milliseconds to minutes; a waiter wakes a few times a second, for nothing but a failed flock.
POLL_SECONDS = 0.05
# How long a waiter waits before it fetches the key itself. Unlike a reader of a flight in its
# own process, it gets no bytes until the other download is published, and clients give up on
# a silent connection (pip after 15 s): a large body is better downloaded twice than not at all.
PATIENCE_SECONDS = 10.0


class Claims:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._held: dict[str, int] = {}  # key -> the descriptor holding its lock
        self._sweep()

    def _sweep(self) -> None:
        """Remove the claim files of holders that died (their lock is free): locked and
        still at their path, as a holder's own release removes them."""
        with contextlib.suppress(OSError):
            for path in self.tmp.glob(f"{CLAIM_PREFIX}*"):
                with contextlib.suppress(OSError):
                    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                    try:
                        if _lock(fd) and _is_at(fd, str(path)):
                            os.unlink(path)
                    finally:
                        os.close(fd)

    def _path(self, key: str) -> str:
        return f"{self.tmp}/{CLAIM_PREFIX}{key_digest(key)}"

    def claim(self, key: str) -> bool:
        """Lock `key` for this process's download; False when another process holds it. An
        unusable tmp dir claims nothing and says True: then each process fetches for itself,
        as before there were workers."""
        if key in self._held:
            return True
        path = self._path(key)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            except OSError as exc:
                log.warning("cannot claim a download across processes: %s", exc)
                return True
            if not _lock(fd):
                os.close(fd)
                return False
            if _is_at(fd, path):
                self._held[key] = fd
                return True
            os.close(fd)  # unlinked by its last holder between our open and lock: again

    def holds(self, key: str) -> bool:
        return key in self._held

    def release(self, key: str) -> None:
        fd = self._held.pop(key, None)
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._path(key))
        os.close(fd)

    async def wait(self, key: str) -> bool:
        """Until no other process holds `key` (it published, gave up, or died): True; False
        after PATIENCE_SECONDS."""
        path = self._path(key)
        with trio.move_on_after(PATIENCE_SECONDS):
            while True:
                await trio.sleep(POLL_SECONDS)
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                except OSError:
                    return True  # released and unlinked by its holder (or cannot tell)
                try:
                    if _lock(fd):
                        return True  # free: its holder died (or just released it)
                finally:
                    os.close(fd)
        return False


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_at(fd: int, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
