"""A download in flight, in-process on trio's virtual clock: the first client is fed from
memory, joiners and slow clients read the temp file, memory stays bounded whatever the
clients' pace, and a disk failure still delivers whole responses (and stores nothing)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from transcache.cache import Cache, CacheRequest, Outcome, ResponseSource
from transcache.cache.flight import BATCH_BYTES, WINDOW_BYTES, Flight, State
from transcache.store import BodyWriter

from .test_cache_inprocess import (
    ORIGIN,
    FakeOrigin,
    Scripted,
    fetch,
    read_all,
    start,
)

PIECE = 256 * 1024
IMMUTABLE = [(b"Cache-Control", b"max-age=31536000, immutable")]
PATH = "/big.bin"
# Virtual seconds: long enough to mean "never" for a download that should finish by itself.
NEVER = 600
# Real seconds of nothing happening before the virtual clock may jump, where a test waits for
# work done in worker threads (with no threshold, the clock would jump past a deadline while
# a thread is still writing).
QUIET = 2.0


def pieces(count: int) -> list[bytes]:
    return [os.urandom(PIECE) for _ in range(count)]


async def ask(cache: Cache) -> tuple[ResponseSource, Outcome]:
    return await cache.respond(CacheRequest(b"GET", ORIGIN, PATH, []))


@dataclass
class Download:
    cache: Cache
    origin: FakeOrigin
    first: ResponseSource  # the first asker's answer
    flight: Flight


async def start_download(
    nursery: trio.Nursery, tmp_path: Path, body: list[bytes], pace: float
) -> Download:
    """A cache whose origin sends `body`, one piece per `pace` seconds, and its first miss."""
    origin = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=body, pace=pace))
    cache = await start(nursery, tmp_path, origin)
    first, outcome = await ask(cache)
    assert outcome is Outcome.MISS
    [flight] = cache.downloads.in_flight()
    return Download(cache, origin, first, flight)


async def watch_memory(flight: Flight, most: list[int]) -> None:
    """Record the most body bytes `flight` held in memory at any wake-up, until it ends."""
    while not flight.done.is_set():
        most[0] = max(most[0], flight.buffered)
        await flight.wait()


async def test_the_first_client_is_fed_from_memory_before_anything_is_written(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    download = await start_download(nursery, tmp_path, [b"x" * 1000, b"y" * 1000], 1)
    assert await download.first.read() == b"x" * 1000
    assert download.flight.written == 0  # not re-read from the temp file: nothing is in it
    assert await read_all(download.first) == b"y" * 1000
    await download.cache.downloads.wait_idle()
    assert await fetch(download.cache, PATH) == (b"x" * 1000 + b"y" * 1000, Outcome.HIT)


async def test_a_client_slower_than_the_origin_gets_every_byte_in_bounded_memory(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    body = pieces(64)  # 16 MiB, four times the window
    download = await start_download(nursery, tmp_path, body, 0)
    cache, source, flight = download.cache, download.first, download.flight
    most = [0]
    nursery.start_soon(watch_memory, flight, most)
    first = await source.read()
    # The client has one piece; the download does not wait for it to finish by itself.
    autojump_clock.autojump_threshold = QUIET
    with trio.fail_after(NEVER):
        await flight.done.wait()
    autojump_clock.autojump_threshold = 0
    assert flight.state is State.PUBLISHED
    assert most[0] <= WINDOW_BYTES + PIECE
    assert flight.buffered == 0  # on disk: nothing left in memory for the slow client
    rest = []
    while chunk := await source.read():  # from the file, at the client's own pace
        rest.append(chunk)
        await trio.sleep(1)
    await source.aclose()
    assert first + b"".join(rest) == b"".join(body)
    assert await fetch(cache, PATH) == (b"".join(body), Outcome.HIT)


async def test_a_joiner_mid_download_gets_the_same_bytes_as_the_first_client(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    body = pieces(32)
    download = await start_download(nursery, tmp_path, body, 0.01)
    first, flight = download.first, download.flight
    got = [await first.read() for _ in range(4)]
    while flight.written < BATCH_BYTES:
        await flight.wait()  # so that the joiner starts in the file
    joiner, outcome = await ask(download.cache)
    assert outcome is Outcome.COLLAPSED
    results: dict[str, bytes] = {}

    async def finish(name: str, source: ResponseSource, start: Iterable[bytes]) -> None:
        results[name] = b"".join(start) + await read_all(source)

    async with trio.open_nursery() as readers:
        readers.start_soon(finish, "first", first, got)
        readers.start_soon(finish, "joiner", joiner, [])
    assert results["first"] == results["joiner"] == b"".join(body)
    assert len(download.origin.requests) == 1


async def test_a_disk_failure_mid_body_delivers_whole_responses_in_bounded_memory(
    nursery: trio.Nursery,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_write_all = BodyWriter.write_all

    def disk_full_after_a_batch(writer: BodyWriter, data: Iterable[bytes]) -> None:
        if writer.written >= BATCH_BYTES:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(writer, data)

    monkeypatch.setattr(BodyWriter, "write_all", disk_full_after_a_batch)
    body = pieces(48)
    download = await start_download(nursery, tmp_path, body, 0)
    cache, fast, flight = download.cache, download.first, download.flight
    most = [0]
    nursery.start_soon(watch_memory, flight, most)
    slow, outcome = await ask(cache)
    assert outcome is Outcome.COLLAPSED
    results: dict[str, bytes] = {}

    async def read(name: str, source: ResponseSource, pace: float) -> None:
        parts = []
        while chunk := await source.read():
            parts.append(chunk)
            await trio.sleep(pace)
        await source.aclose()
        results[name] = b"".join(parts)

    async with trio.open_nursery() as readers:
        readers.start_soon(read, "fast", fast, 0)
        readers.start_soon(read, "slow", slow, 1)
    assert results["fast"] == results["slow"] == b"".join(body)
    await cache.downloads.wait_idle()
    assert flight.state is State.DELIVERED
    assert most[0] <= WINDOW_BYTES + PIECE  # the slow reader paced the origin
    monkeypatch.undo()
    assert (await fetch(cache, PATH))[1] is Outcome.MISS  # nothing was stored


async def test_a_client_leaving_mid_download_leaves_it_running_to_publish(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    body = pieces(24)
    download = await start_download(nursery, tmp_path, body, 0.01)
    await download.first.read()
    await download.first.aclose()
    await download.cache.downloads.wait_idle()
    assert download.flight.state is State.PUBLISHED
    assert download.flight.buffered == 0
    assert await fetch(download.cache, PATH) == (b"".join(body), Outcome.HIT)


async def test_a_shutdown_once_the_whole_body_arrived_still_publishes_it(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    autojump_clock.autojump_threshold = QUIET
    body = pieces(6)
    async with trio.open_nursery() as proxy:
        download = await start_download(proxy, tmp_path, body, 0)
        flight = download.flight
        while flight.state is State.STORING:
            await flight.wait()
        assert flight.state is State.COMPLETE
        proxy.cancel_scope.cancel()  # the proxy stops as its publish begins
    restarted = await start(nursery, tmp_path, FakeOrigin(Scripted(headers=IMMUTABLE)))
    assert await fetch(restarted, PATH) == (b"".join(body), Outcome.HIT)
