"""Single flight across processes (`cache/claims.py`): two caches on one cache dir download a
key once, the second waiting for the first; a claim dies with the process holding it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio
import trio.testing

from transcache.cache import Outcome
from transcache.cache.claims import PATIENCE_SECONDS, Claims

from .test_cache_inprocess import FakeOrigin, Scripted, fetch, start

KEY = "https://files.test/page.html"


async def test_a_cache_waits_for_the_download_another_has_under_way(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # Two Stores in one process hold their lock files open separately, as two workers do.
    held = trio.Event()
    fresh = [(b"Cache-Control", b"max-age=600")]
    origin = FakeOrigin(Scripted(headers=fresh, chunks=[b"once"], release_head=held, pace=0))
    results: dict[str, tuple[bytes, Outcome]] = {}

    async def ask(name: str, cache_of: trio.Nursery) -> None:
        cache = await start(cache_of, tmp_path, origin)
        answer = await fetch(cache)
        await cache.downloads.wait_idle()  # published (or nothing to publish)
        results[name] = answer

    async with trio.open_nursery() as first, trio.open_nursery() as second:
        first.start_soon(ask, "first", first)
        await trio.testing.wait_all_tasks_blocked()  # its request is out, its head held
        second.start_soon(ask, "second", second)
        await trio.testing.wait_all_tasks_blocked()  # waiting on the claim (the clock stands)
        assert len(origin.requests) == 1
        held.set()
        while "first" not in results:  # its publishing runs in a thread
            await trio.testing.wait_all_tasks_blocked()
        assert "second" not in results
        while "second" not in results:
            mock_clock.jump(1)  # the second polls the claim: free, so it looks again
            await trio.testing.wait_all_tasks_blocked()
        first.cancel_scope.cancel()
        second.cancel_scope.cancel()
    assert results == {"first": (b"once", Outcome.MISS), "second": (b"once", Outcome.HIT)}
    assert len(origin.requests) == 1


def test_a_claim_is_exclusive_and_released(tmp_path: Path) -> None:
    first, second = Claims(tmp_path), Claims(tmp_path)
    assert first.claim(KEY) and first.holds(KEY)
    assert first.claim(KEY)  # again, from the same process: still its own
    assert not second.claim(KEY)
    first.release(KEY)
    assert list(tmp_path.iterdir()) == []  # the holder leaves no lock file behind
    assert second.claim(KEY)


def test_a_claim_dies_with_its_holder(tmp_path: Path) -> None:
    claims = Claims(tmp_path)
    holder = f"""
import fcntl, os, sys
from pathlib import Path
from transcache.cache.claims import PATIENCE_SECONDS, Claims
claims = Claims(Path({str(tmp_path)!r}))
assert claims.claim({KEY!r})
print("claimed", flush=True)
sys.stdin.read()
"""
    process = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "claimed\n"
        assert not claims.claim(KEY)
        process.kill()  # no release: the kernel drops the lock, the file stays
        process.wait()

        async def released() -> None:
            with trio.fail_after(10):
                await claims.wait(KEY)

        trio.run(released)
        assert claims.claim(KEY)
    finally:
        process.kill()
        process.wait()


def test_a_dead_holders_claim_file_is_removed_by_the_next_process(tmp_path: Path) -> None:
    # A process killed mid-download leaves its claim file; nobody may ever ask for that key
    # again, so the next process to start on the cache dir removes it (a live claim stays).
    live = Claims(tmp_path)
    assert live.claim("https://files.test/live")
    holder = f"""
from pathlib import Path
from transcache.cache.claims import Claims
assert Claims(Path({str(tmp_path)!r})).claim({KEY!r})
"""
    subprocess.run([sys.executable, "-c", holder], check=True)  # exits holding it
    assert len(list(tmp_path.iterdir())) == 2
    Claims(tmp_path)
    [left] = tmp_path.iterdir()
    assert live.holds("https://files.test/live") and left.exists()
    live.release("https://files.test/live")
    assert list(tmp_path.iterdir()) == []


async def test_a_cache_stops_waiting_for_a_slow_download_and_fetches_it_too(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    held = trio.Event()  # the first download's head never comes
    origin = FakeOrigin(Scripted(release_head=held), Scripted(chunks=[b"second"]))
    async with trio.open_nursery() as first, trio.open_nursery() as second:
        first.start_soon(fetch, await start(first, tmp_path, origin))
        await trio.testing.wait_all_tasks_blocked()
        cache = await start(second, tmp_path, origin)
        results: list[tuple[bytes, Outcome]] = []

        async def ask() -> None:
            results.append(await fetch(cache))

        second.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert len(origin.requests) == 1
        mock_clock.jump(PATIENCE_SECONDS)  # the second gives up waiting
        while not results:
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(1)
        first.cancel_scope.cancel()
        second.cancel_scope.cancel()
    assert results == [(b"second", Outcome.MISS)]
    assert len(origin.requests) == 2
