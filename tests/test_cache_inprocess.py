"""The cache in-process, against a scripted origin behind the `Upstream` protocol and a real
store in a temp dir, on trio's virtual clock: single flight, revalidation, upstream faults
and stale answers, without sockets or subprocesses."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from transcache._config import Config
from transcache._errors import UpstreamError, UpstreamUnreachableError
from transcache._protocol import Headers, Origin, header_value
from transcache._upstream import BodyReader
from transcache.cache import Cache, CacheRequest, Outcome, ResponseSource
from transcache.store import Store

ORIGIN = Origin("https", "files.test", 443)
MiB = 1024 * 1024


@dataclass
class Scripted:
    """One answer of the fake origin: its head, its body in pieces, and where it pauses."""

    status: int = 200
    headers: Headers = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=lambda: [b"body"])
    release_head: trio.Event | None = None  # the head waits for this
    fail_after: int | None = None  # break off after this many chunks
    pace: float = 0.01  # seconds between chunks, on trio's clock
    head_after: float = 0.0  # seconds the head takes, on trio's clock
    # The body came with the head (a small one, in the same TLS record): read without a
    # checkpoint, as the upstream pool reads what h11 has buffered.
    buffered: bool = False


class FakeAnswer:
    def __init__(self, script: Scripted) -> None:
        self.status = script.status
        self.reason = b"OK"
        self.headers = list(script.headers)
        self._script = script
        self._sent = 0
        self.closed = False

    async def read(self) -> bytes:
        script = self._script
        if script.fail_after is not None and self._sent == script.fail_after:
            raise UpstreamError("files.test:443 broke off")
        if self._sent == len(script.chunks):
            return b""
        if not script.buffered:
            await trio.sleep(script.pace)  # a network's pace, on the virtual clock
        self._sent += 1
        return script.chunks[self._sent - 1]

    async def aclose(self) -> None:
        self.closed = True


class FakeOrigin:
    """Answers requests from a script, one Scripted per request in order (the last one
    repeats); records what it was asked."""

    def __init__(self, *answers: Scripted | BaseException) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[bytes, bytes, Headers]] = []

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodyReader | None,
    ) -> FakeAnswer:
        self.requests.append((method, target, headers))
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        if answer.release_head is not None:
            await answer.release_head.wait()
        if answer.head_after:
            await trio.sleep(answer.head_after)
        return FakeAnswer(answer)


@pytest.fixture
async def open_cache(
    tmp_path: Path,
) -> AsyncIterator[tuple[trio.Nursery, Path]]:
    async with trio.open_nursery() as nursery:
        yield nursery, tmp_path
        nursery.cancel_scope.cancel()


async def start(nursery: trio.Nursery, tmp: Path, origin: FakeOrigin, **options: object) -> Cache:
    config = Config(cache_dir=tmp / "cache", ca_dir=tmp / "ca", **options)  # type: ignore[arg-type]
    # The cache's wall clock follows trio's virtual one, so hours pass in no time.
    start = time.time()
    clock = lambda: start + trio.current_time()  # noqa: E731
    cache = Cache(config, Store(config.cache_dir, config.max_size), origin, clock)
    await nursery.start(cache.run)
    return cache


async def answer(cache: Cache, path: str, *lines: bytes) -> tuple[bytes, Outcome, bytes]:
    """GET `path` with header `lines` (b"Name: value"): body, outcome and Cache-Status."""
    headers: Headers = [tuple(line.split(b": ", 1)) for line in lines]  # type: ignore[misc]
    source, outcome = await cache.respond(CacheRequest(b"GET", ORIGIN, path, headers))
    status = header_value(source.headers, b"cache-status") or b""
    return await read_all(source), outcome, status


async def fetch(cache: Cache, path: str = "/page.html", *lines: bytes) -> tuple[bytes, Outcome]:
    body, outcome, _ = await answer(cache, path, *lines)
    return body, outcome


async def read_all(source: ResponseSource) -> bytes:
    parts = []
    try:
        while chunk := await source.read():
            parts.append(chunk)
    finally:
        await source.aclose()
    return b"".join(parts)


async def test_requests_arriving_together_share_one_upstream_fetch(
    open_cache: tuple[trio.Nursery, Path], mock_clock: trio.testing.MockClock
) -> None:
    nursery, tmp = open_cache
    held = trio.Event()
    body = [bytes([n]) * 64 * 1024 for n in range(16)]
    fresh = [(b"Cache-Control", b"max-age=600")]
    origin = FakeOrigin(Scripted(headers=fresh, chunks=body, release_head=held, pace=0))
    cache = await start(nursery, tmp, origin)
    results: list[tuple[bytes, Outcome]] = []

    async def one() -> None:
        results.append(await fetch(cache))

    async with trio.open_nursery() as clients:
        for _ in range(8):
            clients.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()  # all eight wait for the one head
        held.set()
    assert len(origin.requests) == 1
    assert [data for data, _ in results] == [b"".join(body)] * 8
    outcomes = sorted(outcome.value for _, outcome in results)
    assert outcomes == ["collapsed"] * 7 + ["miss"]
    await cache.downloads.wait_idle()  # published
    assert (await fetch(cache))[1] is Outcome.HIT


async def test_a_stale_entry_is_revalidated_and_a_304_answers_from_disk(
    open_cache: tuple[trio.Nursery, Path], autojump_clock: trio.testing.MockClock
) -> None:
    nursery, tmp = open_cache
    stored = [(b"Cache-Control", b"max-age=0"), (b"ETag", b'"v1"')]
    origin = FakeOrigin(Scripted(headers=stored), Scripted(status=304, headers=[], chunks=[]))
    cache = await start(nursery, tmp, origin)
    assert await fetch(cache) == (b"body", Outcome.MISS)
    await cache.downloads.wait_idle()  # published
    assert await fetch(cache) == (b"body", Outcome.REVALIDATED)
    method, _, headers = origin.requests[1]
    assert method == b"GET"
    assert header_value(headers, b"if-none-match") == b'"v1"'


async def test_an_upstream_fault_mid_body_cuts_every_reader_and_stores_nothing(
    open_cache: tuple[trio.Nursery, Path], autojump_clock: trio.testing.MockClock
) -> None:
    nursery, tmp = open_cache
    broken = Scripted(chunks=[b"a" * 1000] * 4, fail_after=2)
    origin = FakeOrigin(broken, Scripted())
    cache = await start(nursery, tmp, origin)
    with pytest.raises(UpstreamError, match="broke off"):
        await fetch(cache)
    await cache.downloads.wait_idle()
    assert await fetch(cache) == (b"body", Outcome.MISS)  # nothing was stored: asked again
    assert len(origin.requests) == 2


@pytest.mark.parametrize(
    ("cache_control", "served"), [(b"max-age=0", True), (b"max-age=0, must-revalidate", False)]
)
async def test_an_unreachable_origin_gets_a_stale_copy_only_where_allowed(
    open_cache: tuple[trio.Nursery, Path],
    autojump_clock: trio.testing.MockClock,
    cache_control: bytes,
    served: bool,
) -> None:
    nursery, tmp = open_cache
    origin = FakeOrigin(
        Scripted(headers=[(b"Cache-Control", cache_control)]),
        UpstreamUnreachableError("cannot connect to files.test:443"),
    )
    cache = await start(nursery, tmp, origin)
    await fetch(cache)
    await cache.downloads.wait_idle()
    if served:
        assert await fetch(cache) == (b"body", Outcome.STALE)
    else:
        with pytest.raises(Exception, match="must-revalidate") as refused:
            await fetch(cache)
        assert getattr(refused.value, "status", None) == 504


async def test_offline_answers_from_disk_and_never_asks_the_origin(
    open_cache: tuple[trio.Nursery, Path], autojump_clock: trio.testing.MockClock
) -> None:
    nursery, tmp = open_cache
    origin = FakeOrigin(Scripted(headers=[(b"Cache-Control", b"max-age=0")]))
    online = await start(nursery, tmp, origin)
    await fetch(online)
    await online.downloads.wait_idle()
    config = Config(cache_dir=tmp / "cache", ca_dir=tmp / "ca", offline=True)
    offline = Cache(config, Store(config.cache_dir, config.max_size), origin)
    await nursery.start(offline.run)
    assert await fetch(offline) == (b"body", Outcome.OFFLINE)
    with pytest.raises(Exception, match="offline mode") as missed:
        await fetch(offline, "/other.html")
    assert getattr(missed.value, "status", None) == 504
    assert len(origin.requests) == 1


# -- index pages on the virtual clock --------------------------------------------------------------

PAGE = "/simple/pkg/"
RELOAD = b"Cache-Control: max-age=0"  # what pip and uv send for every index page


async def fetch_page(cache: Cache, *lines: bytes) -> tuple[bytes, Outcome, bytes]:
    return await answer(cache, PAGE, *lines)


# These run on a virtual clock that moves only when told (`mock_clock.jump`): publishing a
# body takes a worker thread, during which an autojumping clock would race ahead.


def page(body: bytes, held: trio.Event | None = None) -> Scripted:
    return Scripted(chunks=[body], pace=0, release_head=held)


async def settle(cache: Cache) -> None:
    await trio.testing.wait_all_tasks_blocked()
    await cache.downloads.wait_idle()


async def test_an_index_page_without_cache_headers_is_a_hit_for_its_window_despite_reloads(
    open_cache: tuple[trio.Nursery, Path], mock_clock: trio.testing.MockClock
) -> None:
    nursery, tmp = open_cache
    origin = FakeOrigin(page(b"v1"), page(b"v2"))
    cache = await start(nursery, tmp, origin)
    assert (await fetch_page(cache))[:2] == (b"v1", Outcome.MISS)
    await settle(cache)
    mock_clock.jump(598)
    body, outcome, status = await fetch_page(cache, RELOAD)
    assert (body, outcome) == (b"v1", Outcome.HIT)
    assert status == b'transcache; hit; detail="pypi-project-page index-window"'
    assert len(origin.requests) == 1


async def test_past_its_window_an_index_page_answers_at_once_and_refreshes_once_behind(
    open_cache: tuple[trio.Nursery, Path], mock_clock: trio.testing.MockClock
) -> None:
    nursery, tmp = open_cache
    held = trio.Event()
    origin = FakeOrigin(page(b"v1"), page(b"v2", held))
    cache = await start(nursery, tmp, origin)
    await fetch_page(cache)
    await settle(cache)
    mock_clock.jump(602)
    # The refresh is held at the origin: the clients are answered anyway, from the store.
    for _ in range(3):
        body, outcome, status = await fetch_page(cache, RELOAD)
        assert (body, outcome) == (b"v1", Outcome.STALE_WHILE_REVALIDATE)
    assert status == b'transcache; hit; detail="pypi-project-page stale-while-revalidate"'
    await trio.testing.wait_all_tasks_blocked()
    assert len(origin.requests) == 2  # one refresh for three requests
    held.set()
    await settle(cache)
    assert (await fetch_page(cache))[:2] == (b"v2", Outcome.HIT)


async def test_a_day_past_its_window_an_index_page_waits_for_the_origin(
    open_cache: tuple[trio.Nursery, Path], mock_clock: trio.testing.MockClock
) -> None:
    nursery, tmp = open_cache
    origin = FakeOrigin(page(b"v1"), page(b"v2"))
    cache = await start(nursery, tmp, origin)
    await fetch_page(cache)
    await settle(cache)
    mock_clock.jump(602 + 24 * 3600)
    assert (await fetch_page(cache))[:2] == (b"v2", Outcome.MISS)  # revalidated: a new body


async def test_strict_client_reload_revalidates_inside_the_window(
    open_cache: tuple[trio.Nursery, Path], mock_clock: trio.testing.MockClock
) -> None:
    nursery, tmp = open_cache
    origin = FakeOrigin(page(b"v1"), page(b"v2"))
    cache = await start(nursery, tmp, origin, strict_client_reload=True)
    await fetch_page(cache)
    await settle(cache)
    assert (await fetch_page(cache))[1] is Outcome.HIT
    assert (await fetch_page(cache, RELOAD))[:2] == (b"v2", Outcome.MISS)


# -- registry shapes, from an origin that sends no cache headers at all ----------------------------

ARTIFACTS = [
    "/packages/3d/5f/8c0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607182/pkg-1.0.tar.gz",
    "/files/pkg-1.0-py3-none-any.whl",
    "/files/pkg-1.0-py3-none-any.whl.metadata",
    "/pkg/-/pkg-1.0.0.tgz",
    "/debian/pool/main/p/pkg/pkg_1.0-1_amd64.deb",
    "/debian/dists/stable/main/by-hash/SHA256/" + "ab" * 32,
    "/api/v1/crates/pkg/1.0.0/download",
    "/example.test/mod/@v/v1.0.0.zip",
    "/maven2/org/example/lib/1.0/lib-1.0.jar",
    "/conda-forge/noarch/pkg-1.0-py_0.conda",
    "/gems/pkg-1.0.0.gem",
    "/v3-flatcontainer/pkg/1.0.0/pkg.1.0.0.nupkg",
    "/archive/" + "0123456789abcdef" * 2 + "01234567.tar.gz",  # a commit id
]


@pytest.mark.parametrize("path", ARTIFACTS)
async def test_every_artifact_shape_is_a_hit_days_later_with_no_cache_headers(
    open_cache: tuple[trio.Nursery, Path], mock_clock: trio.testing.MockClock, path: str
) -> None:
    nursery, tmp = open_cache
    origin = FakeOrigin(page(b"artifact"), page(b"changed"))
    cache = await start(nursery, tmp, origin)
    assert await fetch(cache, path) == (b"artifact", Outcome.MISS)
    await settle(cache)
    mock_clock.jump(30 * 24 * 3600)
    assert await fetch(cache, path, RELOAD) == (b"artifact", Outcome.HIT)
    assert len(origin.requests) == 1


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/simple/pkg/", b"text/html"),
        ("/pkg", b"application/vnd.npm.install-v1+json"),
        ("/debian/dists/stable/InRelease", b"*/*"),
        ("/pk/g1/pkg1", b"*/*"),
    ],
)
async def test_every_index_shape_gets_the_window_with_no_cache_headers(
    open_cache: tuple[trio.Nursery, Path],
    mock_clock: trio.testing.MockClock,
    path: str,
    accept: bytes,
) -> None:
    nursery, tmp = open_cache
    origin = FakeOrigin(page(b"index"), page(b"changed"))
    cache = await start(nursery, tmp, origin)
    assert await fetch(cache, path, b"Accept: " + accept) == (b"index", Outcome.MISS)
    await settle(cache)
    mock_clock.jump(300)
    assert await fetch(cache, path, b"Accept: " + accept, RELOAD) == (b"index", Outcome.HIT)
    assert len(origin.requests) == 1


async def test_a_path_of_no_known_shape_follows_the_origins_headers(
    open_cache: tuple[trio.Nursery, Path], mock_clock: trio.testing.MockClock
) -> None:
    nursery, tmp = open_cache
    origin = FakeOrigin(page(b"v1"), page(b"v2"))
    cache = await start(nursery, tmp, origin)
    await fetch(cache, "/downloads/latest.tar.gz")
    await settle(cache)
    assert await fetch(cache, "/downloads/latest.tar.gz") == (b"v2", Outcome.MISS)
