"""Blobs: least-recently-used eviction (pure, on a list of files), and size accounting that
stays exact while bodies are published and evicted from worker threads, because only the
owner thread ever changes it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from transcache.store import Store
from transcache.store.blobs import BlobFile, BlobLedger, evict_lru, scan

MAX_SIZE = 10 * 1024 * 1024


def files(*ages_and_sizes: tuple[str, float, int]) -> list[BlobFile]:
    return [BlobFile(Path(name), size, mtime) for name, mtime, size in ages_and_sizes]


def test_eviction_removes_the_least_recently_used_first_and_stops_at_the_target() -> None:
    removed: list[str] = []
    eviction = evict_lru(
        files(("new", 30.0, 100), ("old", 10.0, 100), ("middle", 20.0, 100), ("newest", 40.0, 1)),
        target=150,
        remove=lambda path: removed.append(path.name),
    )
    assert removed == ["old", "middle"]
    assert (eviction.freed, eviction.remaining) == (200, 101)


def test_eviction_passes_over_a_file_it_cannot_remove() -> None:
    removed: list[str] = []

    def remove(path: Path) -> None:
        if path.name == "held":
            raise PermissionError(path)
        removed.append(path.name)

    eviction = evict_lru(
        files(("held", 1.0, 100), ("old", 2.0, 100), ("new", 3.0, 100)), target=100, remove=remove
    )
    assert removed == ["old", "new"]
    assert (eviction.freed, eviction.remaining) == (200, 100)


def test_eviction_under_the_target_removes_nothing() -> None:
    def refuse(path: Path) -> None:
        pytest.fail(f"removed {path}")

    eviction = evict_lru(files(("a", 1.0, 50)), target=50, remove=refuse)
    assert (eviction.freed, eviction.remaining) == (0, 50)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "cache", MAX_SIZE)
    yield opened
    opened.close()


@pytest.fixture
def ledger_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that change any store's blob ledger."""
    seen: list[str] = []
    for name in ("added", "removed", "recount", "remember"):
        original = getattr(BlobLedger, name)

        def recorded(self: BlobLedger, *args: object, _original: object = original) -> None:
            seen.append(threading.current_thread().name)
            _original(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(BlobLedger, name, recorded)
    return seen


async def publish(store: Store, key: str, body: bytes) -> None:
    writer = store.begin()
    writer.write(body)
    fields = {
        "key": key,
        "url": f"https://files.test/{key}",
        "status": 200,
        "reason": b"OK",
        "headers": [],
        "request_time": 1.0,
        "response_time": 2.0,
    }
    await store.commit(writer, fields)


def stored_bytes(store: Store) -> int:
    return sum(blob.size for blob in scan(store.layout.blobs))


async def test_bodies_published_from_worker_threads_are_counted_once_each(
    store: Store, ledger_threads: list[str]
) -> None:
    bodies = [bytes([i]) * (1000 + i) for i in range(40)] * 2  # each body twice: one blob
    async with trio.open_nursery() as nursery:
        for i, body in enumerate(bodies):
            nursery.start_soon(publish, store, f"k{i}", body)
    assert store.size == stored_bytes(store) == sum(len(b) for b in bodies[:40])
    assert set(ledger_threads) == {threading.current_thread().name}


async def test_size_stays_exact_while_evicting_and_publishing_at_once(
    store: Store, ledger_threads: list[str]
) -> None:
    for i in range(20):
        await publish(store, f"old{i}", bytes([i]) * 1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.evict, 5000)
        for i in range(20):
            nursery.start_soon(publish, store, f"new{i}", bytes([100 + i]) * 1000)
    # A body the eviction's scan missed may be counted twice, never not at all: the store
    # can only think itself fuller than it is.
    assert store.size >= stored_bytes(store)
    await store.evict(0)
    assert store.size == stored_bytes(store) == 0
    assert set(ledger_threads) == {threading.current_thread().name}


async def test_a_large_body_is_hashed_in_a_worker_and_remembered_on_the_owner_thread(
    tmp_path: Path, store: Store, ledger_threads: list[str]
) -> None:
    await publish(store, "large", b"L" * (1024 * 1024))
    entry = store.get("large")
    assert entry is not None
    other = Store(tmp_path / "cache", MAX_SIZE)  # has hashed nothing yet
    try:
        hashing: list[str] = []
        real_run_sync = trio.to_thread.run_sync

        async def run_sync(function, *args):  # type: ignore[no-untyped-def]
            hashing.append(function.__name__)
            return await real_run_sync(function, *args)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trio.to_thread, "run_sync", run_sync)
            assert other.needs_hashing(entry)
            assert await other.verified(entry)
        assert hashing == ["check_blob"]
        assert not other.needs_hashing(entry)
    finally:
        other.close()
    assert set(ledger_threads) == {threading.current_thread().name}
