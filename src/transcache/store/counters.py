"""Counters of what the proxy did, kept in the store and shared by every process using it.

Counts are added up in memory (`count`, owner thread only) and flushed to `v1/stats.json`
under a file lock, so several processes sharing one cache dir never lose each other's counts.
A running proxy flushes every few seconds and at exit, and at once when asked (its
/stats.json page), so `cache stats` reads exact counts while proxies run.

Per-ecosystem counters (`EcosystemCounter`) sit beside the others in the same file, under
`ecosystem/<name>/<counter>`; the store does not know what an ecosystem is, only its name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

from .layout import FILE_MODE, Layout, replace_private

log = logging.getLogger("transcache.store")


class Counter(StrEnum):
    """The counters, in the order `cache stats` shows them."""

    HITS = "hits"
    MISSES = "misses"
    REVALIDATIONS = "revalidations"
    STORED = "stored"
    BYTES_FROM_CACHE = "bytes_from_cache"
    BYTES_FROM_UPSTREAM = "bytes_from_upstream"
    OFFLINE_MISSES = "offline_misses"
    GIT_HITS = "git_hits"
    GIT_MISSES = "git_misses"
    GIT_BYTES_FROM_CACHE = "git_bytes_from_cache"
    # The shared tier: entries and bytes it answered, entries and body bytes uploaded to it,
    # and its failures (each one a tier miss, never a failed request).
    SHARED_HITS = "shared_hits"
    SHARED_BYTES = "shared_bytes"
    SHARED_UPLOADS = "shared_uploads"
    SHARED_UPLOAD_BYTES = "shared_upload_bytes"
    SHARED_ERRORS = "shared_errors"


class EcosystemCounter(StrEnum):
    """What is counted per ecosystem, in the order `cache stats` shows it."""

    HITS = "hits"
    MISSES = "misses"
    BYTES_FROM_CACHE = "bytes_from_cache"
    BYTES_FROM_UPSTREAM = "bytes_from_upstream"


ECOSYSTEM_PREFIX = "ecosystem/"
ECOSYSTEM_COUNTERS = frozenset(str(name) for name in EcosystemCounter)


def ecosystem_key(ecosystem: str, name: EcosystemCounter) -> str:
    return f"{ECOSYSTEM_PREFIX}{ecosystem}/{name}"


def by_ecosystem(counters: dict[str, int]) -> dict[str, dict[str, int]]:
    """The per-ecosystem counters of a `read()`: {ecosystem: {counter: value}}, every
    counter present (0 when never counted), ecosystems in name order."""
    found: dict[str, dict[str, int]] = {}
    for key, value in counters.items():
        ecosystem, _, name = key.removeprefix(ECOSYSTEM_PREFIX).partition("/")
        if key.startswith(ECOSYSTEM_PREFIX) and name in ECOSYSTEM_COUNTERS:
            found.setdefault(ecosystem, {str(c): 0 for c in EcosystemCounter})[name] = value
    return {ecosystem: found[ecosystem] for ecosystem in sorted(found)}


class CounterBook:
    def __init__(self, layout: Layout, tmp_dir: Path) -> None:
        self._layout = layout
        self._tmp_dir = tmp_dir
        self._pending: dict[str, int] = {}

    def count(self, name: Counter, amount: int = 1) -> None:
        self._pending[name] = self._pending.get(name, 0) + amount

    def count_ecosystem(self, ecosystem: str, name: EcosystemCounter, amount: int = 1) -> None:
        key = ecosystem_key(ecosystem, name)
        self._pending[key] = self._pending.get(key, 0) + amount

    def flush(self) -> None:
        """Add this process's counts to stats.json (under a lock: processes share it)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            with self._locked() as counters:
                for name, amount in pending.items():
                    current = counters.get(name, 0)
                    counters[name] = (current if isinstance(current, int) else 0) + amount
        except OSError as exc:
            log.warning("cannot update %s: %s", self._layout.stats, exc)

    def read(self) -> dict[str, int]:
        """Every process's flushed counts."""
        self.flush()
        return _load(self._layout.stats)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, int]]:
        fd = os.open(self._layout.stats_lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            counters = _load(self._layout.stats)
            yield counters
            data = json.dumps(counters, sort_keys=True).encode()
            replace_private(self._tmp_dir, self._layout.stats, data)
        finally:
            os.close(fd)


def _load(path: Path) -> dict[str, int]:
    try:
        counters = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return counters if isinstance(counters, dict) else {}
