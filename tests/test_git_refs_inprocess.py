"""Concurrent git ref discovery through the cache, in-process on trio's virtual clock: many
clones of one repository at once, in two workers on one cache dir, as the soak runs them
(issue 14's W8). Ref discovery is never answered fresh from the cache, so every request for
it goes upstream or waits for the one under way; none may fail because the others keep
replacing the stored copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from transcache._errors import ProxyError
from transcache._protocol import Headers, header_value
from transcache._upstream import replay
from transcache.cache import Cache, CacheRequest, Outcome

from .test_cache_inprocess import ORIGIN, FakeOrigin, Scripted, read_all, start
from .test_git_keys import V2_CAPS, v2_request

INFO_REFS = "/repo.git/info/refs?service=git-upload-pack"
UPLOAD_PACK = "/repo.git/git-upload-pack"
V2 = (b"Git-Protocol", b"version=2")
# What git http-backend sends with ref discovery.
ADVERTISEMENT = [
    (b"Content-Type", b"application/x-git-upload-pack-advertisement"),
    (b"Cache-Control", b"no-cache, max-age=0, must-revalidate"),
]
CLONES = 16  # at once, spread over two workers
ROUNDS = 8  # ref discoveries each


def info_refs() -> CacheRequest:
    return CacheRequest(b"GET", ORIGIN, INFO_REFS, [V2])


def ls_refs() -> CacheRequest:
    headers: Headers = [(b"Content-Type", b"application/x-git-upload-pack-request"), V2]
    body = v2_request("ls-refs", V2_CAPS, ["peel", "symrefs", "ref-prefix refs/heads/"])
    return CacheRequest(b"POST", ORIGIN, UPLOAD_PACK, headers, replay(body))


async def ask(cache: Cache, request: CacheRequest) -> tuple[bytes, Outcome, bytes]:
    """The body, the outcome and the Cache-Status of `request`'s answer."""
    source, outcome = await cache.respond(request)
    status = header_value(source.headers, b"cache-status") or b""
    return await read_all(source), outcome, status


def advertisement(body: bytes, held: trio.Event | None = None) -> Scripted:
    return Scripted(headers=ADVERTISEMENT, chunks=[body], release_head=held, pace=0)


async def test_a_ref_discovery_that_waited_for_another_workers_gets_its_answer(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    held = trio.Event()
    origin = FakeOrigin(advertisement(b"refs", held), advertisement(b"asked again"))
    results: dict[str, tuple[bytes, Outcome, bytes]] = {}
    async with trio.open_nursery() as nursery:
        first, second = [await start(nursery, tmp_path, origin) for _ in range(2)]

        async def clone(name: str, cache: Cache) -> None:
            answer = await ask(cache, info_refs())
            await cache.downloads.wait_idle()  # published (or nothing to publish)
            results[name] = answer

        nursery.start_soon(clone, "first", first)
        await trio.testing.wait_all_tasks_blocked()  # its request is out, its head held
        nursery.start_soon(clone, "second", second)
        await trio.testing.wait_all_tasks_blocked()  # waiting on the first's claim
        mock_clock.jump(1)  # the origin answers after the second request arrived
        held.set()
        while "first" not in results:  # its publishing runs in a thread
            await trio.testing.wait_all_tasks_blocked()
        while "second" not in results:
            mock_clock.jump(1)  # the second polls the claim: free, so it looks again
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(origin.requests) == 1
    assert results["first"][:2] == (b"refs", Outcome.MISS)
    collapsed = b"transcache; fwd=miss; fwd-status=200; stored; collapsed"
    assert results["second"] == (b"refs", Outcome.COLLAPSED, collapsed)


@pytest.mark.parametrize("discover", [info_refs, ls_refs], ids=["info-refs", "ls-refs"])
async def test_a_ref_discovery_after_an_answer_was_stored_asks_the_origin(
    tmp_path: Path, mock_clock: trio.testing.MockClock, discover: object
) -> None:
    assert callable(discover)
    origin = FakeOrigin(advertisement(b"v1"), advertisement(b"v2"))
    async with trio.open_nursery() as nursery:
        cache = await start(nursery, tmp_path, origin)
        assert (await ask(cache, discover()))[:2] == (b"v1", Outcome.MISS)
        await cache.downloads.wait_idle()  # published, at the instant the next one arrives
        assert (await ask(cache, discover()))[:2] == (b"v2", Outcome.MISS)
        nursery.cancel_scope.cancel()
    assert len(origin.requests) == 2


@pytest.mark.parametrize("discover", [info_refs, ls_refs], ids=["info-refs", "ls-refs"])
async def test_concurrent_clones_never_fail_ref_discovery(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, discover: object
) -> None:
    assert callable(discover)
    # Each answer's body comes with its head, so a download can end before the requests
    # waiting for its head are scheduled, as with a real origin's small ref advertisement.
    refs = Scripted(headers=ADVERTISEMENT, chunks=[b"refs"], head_after=0.001, buffered=True)
    origin = FakeOrigin(refs)
    failures: list[str] = []
    async with trio.open_nursery() as nursery:
        workers = [await start(nursery, tmp_path, origin) for _ in range(2)]

        async def clone(cache: Cache) -> None:
            for _ in range(ROUNDS):
                try:
                    assert (await ask(cache, discover()))[0] == b"refs"
                except ProxyError as error:
                    failures.append(str(error))

        async with trio.open_nursery() as clones:
            for number in range(CLONES):
                clones.start_soon(clone, workers[number % 2])
        nursery.cancel_scope.cancel()
    assert failures == []
