"""Several processes on one cache dir (the workers of `run --workers N`, or a service and a
`transcache exec`): each counts only what it added itself since it last looked at the disk,
so each must look again before the others' bodies can take the cache past --max-size, and
before its size and entry gauges say only half of what is stored."""

from __future__ import annotations

import time
from pathlib import Path

import trio
import trio.lowlevel
import trio.testing

from transcache.store import Store
from transcache.store.blobs import scan
from transcache.store.recount import RECOUNT_SECONDS, keep_counted

from .test_cache_inprocess import FakeOrigin, Scripted, fetch, start
from .test_store import publish

MAX_SIZE = 10_000
BODY = 1_000
FRESH = [(b"Cache-Control", b"max-age=600")]


async def test_two_caches_on_one_dir_stay_under_max_size_together(tmp_path: Path) -> None:
    # Two Stores in one process hold separate temp dirs, as two processes do.
    bodies = {name: bytes([n]) * BODY for n, name in enumerate("abcdefghijklmnopqrst")}
    scripts = [Scripted(headers=FRESH, chunks=[body], pace=0) for body in bodies.values()]
    async with trio.open_nursery() as nursery:
        caches = [
            await start(nursery, tmp_path, FakeOrigin(*scripts[side::2]), max_size=MAX_SIZE)
            for side in (0, 1)
        ]
        for n, (name, body) in enumerate(bodies.items()):
            cache = caches[n % 2]
            assert (await fetch(cache, f"/{name}.bin"))[0] == body
            await cache.downloads.wait_idle()
            await trio.testing.wait_all_tasks_blocked()  # its eviction, if one is due
        nursery.cancel_scope.cancel()
    on_disk = sum(blob.size for blob in scan(tmp_path / "cache" / "v1" / "blobs"))
    # Each may add one body past its share of the room before it looks again.
    assert on_disk <= MAX_SIZE + 2 * BODY, on_disk


async def test_a_store_sharing_its_dir_recounts_what_the_others_stored(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    first, second = Store(tmp_path, MAX_SIZE), Store(tmp_path, MAX_SIZE)

    async def counted(entries: int) -> None:
        """Until `second` counts `entries` (its recounts run in a thread)."""
        deadline = time.monotonic() + 10
        while second.entry_count != entries:
            assert time.monotonic() < deadline, second.entry_count
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_counted, second)
            await counted(0)
            for n in range(3):
                publish(first, f"first{n}", bytes([n]) * BODY)
            publish(second, "second", b"s" * BODY)
            assert (second.entry_count, second.size) == (1, BODY)  # its own only, for now
            mock_clock.jump(RECOUNT_SECONDS)
            await counted(4)
            assert second.size == 4 * BODY
            nursery.cancel_scope.cancel()
    finally:
        first.close()
        second.close()
