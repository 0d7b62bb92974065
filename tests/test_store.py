"""The on-disk store: published bodies read back intact, identical bodies are stored once,
nothing partial or damaged is ever returned, dead processes' leftovers are cleaned, eviction is
least-recently-used, and counters from several processes add up."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from transcache._protocol import Headers
from transcache.store import Counter, Entry, Store, maintenance
from transcache.store.layout import LOCK_NAME, key_digest
from transcache.store.store import SMALL_BODY_BYTES

from . import fsaudit

URL = "https://files.test/packages/pkg-1.0.tar.gz"
HEADERS: Headers = [(b"Content-Type", b"application/gzip"), (b"ETag", b'"v1"')]
MAX_SIZE = 10 * 1024 * 1024


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(cache_dir: Path) -> Iterator[Store]:
    opened = Store(cache_dir, MAX_SIZE)
    yield opened
    opened.close()


def publish(store: Store, key: str, body: bytes, headers: Headers = HEADERS) -> Entry:
    writer = store.begin()
    writer.write(body)
    return store.publish(
        writer.finish(),
        {
            "key": key,
            "url": URL,
            "status": 200,
            "reason": b"OK",
            "headers": headers,
            "request_time": 1000.0,
            "response_time": 1001.5,
        },
    )


def meta_path(cache_dir: Path, key: str) -> Path:
    digest = key_digest(key)
    return cache_dir / "v1" / "meta" / digest[:2] / digest[2:4] / digest


def blob_files(cache_dir: Path) -> list[Path]:
    return sorted(path for path in (cache_dir / "v1" / "blobs").rglob("*") if path.is_file())


def tmp_files(cache_dir: Path) -> list[Path]:
    return [
        path
        for path in (cache_dir / "v1" / "tmp").rglob("*")
        if path.is_file() and path.name != LOCK_NAME
    ]


# -- publish and read back --------------------------------------------------------------------


def test_a_published_body_reads_back_with_its_head(store: Store, cache_dir: Path) -> None:
    body = b"wheel bytes " * 10_000
    headers: Headers = [(b"Content-Type", b"text/html"), (b"X-Name", b"caf\xe9")]
    writer = store.begin()
    for start in range(0, len(body), 4096):
        writer.write(memoryview(body)[start : start + 4096])
    published = store.publish(
        writer.finish(),
        {
            "key": "k1",
            "url": URL,
            "status": 203,
            "reason": b"Non-Authoritative Information",
            "headers": headers,
            "request_time": 1000.0,
            "response_time": 1001.5,
            "kind": "git",
        },
    )

    entry = store.get("k1")
    assert entry == published
    assert entry is not None
    assert entry.body_path.read_bytes() == body
    assert (entry.status, entry.reason, entry.headers) == (
        203,
        b"Non-Authoritative Information",
        headers,
    )
    assert (entry.url, entry.request_time, entry.response_time, entry.kind) == (
        URL,
        1000.0,
        1001.5,
        "git",
    )
    digest = hashlib.sha256(body).hexdigest()
    assert (entry.digest, entry.size) == (digest, len(body))
    assert entry.body_path == cache_dir / "v1" / "blobs" / digest[:2] / digest[2:4] / digest
    assert meta_path(cache_dir, "k1").is_file()
    assert tmp_files(cache_dir) == []


def test_a_published_body_is_found_by_the_next_process(store: Store, cache_dir: Path) -> None:
    publish(store, "k1", b"kept across restarts")
    reopened = Store(cache_dir, MAX_SIZE)
    try:
        entry = reopened.get("k1")
        assert entry is not None
        assert entry.body_path.read_bytes() == b"kept across restarts"
        assert reopened.size == len(b"kept across restarts")
    finally:
        reopened.close()


def test_an_unknown_key_is_a_miss(store: Store) -> None:
    publish(store, "k1", b"body")
    assert store.get("k2") is None


def test_an_empty_body_can_be_stored(store: Store) -> None:
    publish(store, "empty", b"")
    entry = store.get("empty")
    assert entry is not None
    assert entry.size == 0
    assert entry.body_path.read_bytes() == b""


def test_refreshed_headers_replace_the_stored_ones(store: Store) -> None:
    entry = publish(store, "k1", b"body")
    entry.headers = [(b"Cache-Control", b"max-age=120")]
    entry.response_time = 2000.0
    store.update_headers(entry)
    refreshed = store.get("k1")
    assert refreshed is not None
    assert refreshed.headers == [(b"Cache-Control", b"max-age=120")]
    assert refreshed.response_time == 2000.0
    assert refreshed.body_path.read_bytes() == b"body"


def test_identical_bodies_share_one_blob(store: Store, cache_dir: Path) -> None:
    body = b"same bytes from two URLs"
    first = publish(store, "mirror-a", body)
    second = publish(store, "mirror-b", body)
    assert first.body_path == second.body_path
    assert blob_files(cache_dir) == [first.body_path]
    assert store.size == len(body)
    assert tmp_files(cache_dir) == []
    stats = maintenance.stats(store)
    assert (stats.entries, stats.bytes) == (2, len(body))


# -- nothing partial or damaged is served -----------------------------------------------------


def test_a_body_being_written_is_not_visible(store: Store, cache_dir: Path) -> None:
    writer = store.begin()
    writer.write(b"first half")
    assert store.get("k1") is None
    assert blob_files(cache_dir) == []
    writer.abort()


def test_an_aborted_body_is_never_visible(store: Store, cache_dir: Path) -> None:
    writer = store.begin()
    writer.write(b"upstream reset after this")
    writer.abort()
    assert store.get("k1") is None
    assert blob_files(cache_dir) == []
    assert tmp_files(cache_dir) == []
    assert store.size == 0


def test_metadata_naming_a_missing_blob_is_a_miss_and_is_removed(
    store: Store, cache_dir: Path
) -> None:
    entry = publish(store, "k1", b"body evicted by another process")
    entry.body_path.unlink()
    assert store.get("k1") is None
    assert not meta_path(cache_dir, "k1").exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"\x00\xff not json",
        lambda data: data[: len(data) // 2],
        lambda data: b"",
        lambda data: json.dumps({**json.loads(data), "status": "OK"}).encode(),
        lambda data: json.dumps({**json.loads(data), "headers": "none"}).encode(),
        lambda data: json.dumps({k: v for k, v in json.loads(data).items() if k != "url"}).encode(),
        lambda data: json.dumps({**json.loads(data), "digest": 42}).encode(),
    ],
    ids=["garbage", "truncated", "empty", "bad-status", "bad-headers", "no-url", "bad-digest"],
)
def test_corrupt_metadata_is_a_miss_and_is_removed(
    store: Store, cache_dir: Path, damage: Callable[[bytes], bytes]
) -> None:
    publish(store, "k1", b"body")
    path = meta_path(cache_dir, "k1")
    path.write_bytes(damage(path.read_bytes()))
    assert store.get("k1") is None
    assert not path.exists()
    publish(store, "k1", b"body")
    assert store.get("k1") is not None


@pytest.mark.parametrize(
    "digest",
    [
        lambda planted, real: str(planted),
        lambda planted, real: "../.." + str(planted),
        lambda planted, real: real.upper(),
        lambda planted, real: real + "\n",
        lambda planted, real: real[:-1],
    ],
    ids=["absolute-path", "dotdot-path", "uppercase", "trailing-newline", "short"],
)
def test_metadata_whose_digest_is_not_a_sha256_is_a_miss_and_is_removed(
    store: Store,
    cache_dir: Path,
    tmp_path: Path,
    digest: Callable[[Path, str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The body path is built from the digest: one naming a path must never reach the disk."""
    body = b"a cached body"
    planted = tmp_path / "planted"
    planted.write_bytes(b"secret bytes!")  # the same size as the body
    entry = publish(store, "k1", body)
    path = meta_path(cache_dir, "k1")
    record = json.loads(path.read_bytes())
    path.write_bytes(json.dumps({**record, "digest": digest(planted, entry.digest)}).encode())
    with fsaudit.recording() as seen:
        assert store.get("k1") is None
    assert seen.touching(planted) == []
    assert not path.exists()
    assert "k1" in caplog.text and "digest" in caplog.text
    assert list(maintenance.entries(store)) == []


def test_metadata_written_for_another_key_is_a_miss_and_left_alone(
    store: Store, cache_dir: Path
) -> None:
    publish(store, "k1", b"body")
    path = meta_path(cache_dir, "k1")
    path.write_bytes(json.dumps({**json.loads(path.read_bytes()), "key": "k2"}).encode())
    assert store.get("k1") is None
    assert path.exists()


@pytest.mark.parametrize(
    "damage",
    [lambda data: data + b"extra", lambda data: data[:-1]],
    ids=["longer", "shorter"],
)
def test_a_blob_of_the_wrong_size_is_a_miss(
    store: Store, cache_dir: Path, damage: Callable[[bytes], bytes]
) -> None:
    entry = publish(store, "k1", b"the body as published")
    entry.body_path.write_bytes(damage(entry.body_path.read_bytes()))
    assert store.get("k1") is None
    assert not meta_path(cache_dir, "k1").exists()


def test_verify_removes_a_corrupted_blob_and_its_metadata(store: Store, cache_dir: Path) -> None:
    good = publish(store, "good", b"intact body")
    bad = publish(store, "bad", b"body hit by a bit flip")
    damaged = bytearray(bad.body_path.read_bytes())
    damaged[0] ^= 0x01
    bad.body_path.write_bytes(bytes(damaged))

    checked, removed = maintenance.verify(store)

    assert (checked, removed) == (2, [bad.body_path])
    assert not bad.body_path.exists()
    assert not meta_path(cache_dir, "bad").exists()
    assert store.get("bad") is None
    assert store.get("good") == good
    assert good.body_path.read_bytes() == b"intact body"


# -- temp dirs of other processes -------------------------------------------------------------


def test_temp_files_of_dead_processes_are_removed_at_open(cache_dir: Path) -> None:
    tmp = cache_dir / "v1" / "tmp"
    crashed = tmp / "4242-deadbeef"
    crashed.mkdir(parents=True)
    (crashed / LOCK_NAME).write_bytes(b"")
    (crashed / "body-0123").write_bytes(b"half a body")
    lockless = tmp / "4343-cafebabe"
    lockless.mkdir()
    (lockless / "meta-0123").write_bytes(b"{")

    opened = Store(cache_dir, MAX_SIZE)
    try:
        assert not crashed.exists()
        assert not lockless.exists()
        assert tmp_files(cache_dir) == []
    finally:
        opened.close()


def test_a_live_processs_temp_files_are_kept(store: Store, cache_dir: Path) -> None:
    writer = store.begin()
    writer.write(b"still arriving")

    second = Store(cache_dir, MAX_SIZE)
    try:
        assert writer.path.read_bytes() == b"still arriving"
        writer.write(b", now complete")
        publish_fields = {
            "key": "k1",
            "url": URL,
            "status": 200,
            "reason": b"OK",
            "headers": HEADERS,
            "request_time": 1.0,
            "response_time": 2.0,
        }
        store.publish(writer.finish(), publish_fields)
        entry = second.get("k1")
        assert entry is not None
        assert entry.body_path.read_bytes() == b"still arriving, now complete"
    finally:
        second.close()


def test_closing_a_store_removes_its_own_temp_dir(cache_dir: Path) -> None:
    opened = Store(cache_dir, MAX_SIZE)
    writer = opened.begin()
    writer.write(b"left over")
    opened.close()
    assert list((cache_dir / "v1" / "tmp").iterdir()) == []


def test_two_stores_opening_at_once_can_both_store(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second store's start-up runs exactly between the first one's mkdir and flock."""
    real_flock = fcntl.flock
    rivals: list[Store] = []
    interleaved = False

    def flock_after_a_rival_opens(fd: int, operation: int) -> None:
        nonlocal interleaved
        if operation == fcntl.LOCK_EX and not interleaved:  # the first store claiming its dir
            interleaved = True
            rivals.append(Store(cache_dir, MAX_SIZE))
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_rival_opens)
    first = Store(cache_dir, MAX_SIZE)
    monkeypatch.undo()
    (second,) = rivals
    try:
        publish(second, "from-second", b"second")
        publish(first, "from-first", b"first")
        assert first.get("from-first") is not None
    finally:
        second.close()
        first.close()


# -- eviction ---------------------------------------------------------------------------------


def _age(entry: Entry, mtime: float) -> None:
    os.utime(entry.body_path, (mtime, mtime))


async def test_eviction_removes_the_least_recently_used_bodies_first(
    store: Store, cache_dir: Path
) -> None:
    oldest = publish(store, "oldest", b"a" * 100)
    middle = publish(store, "middle", b"b" * 100)
    used = publish(store, "used", b"c" * 100)
    _age(oldest, 1_000_000)
    _age(middle, 2_000_000)
    _age(used, 500_000)
    store.touch(used)  # a hit makes it the most recently used

    assert await store.evict(target=150) == 200

    assert store.get("oldest") is None
    assert store.get("middle") is None
    assert store.get("used") is not None
    assert store.size == 100
    assert sum(path.stat().st_size for path in blob_files(cache_dir)) == 100


async def test_eviction_stops_once_under_the_target(store: Store, cache_dir: Path) -> None:
    entries = [publish(store, f"k{i}", bytes([i]) * 100) for i in range(5)]
    for i, entry in enumerate(entries):
        _age(entry, 1_000_000 + i)

    assert await store.evict(target=300) == 200

    assert [store.get(f"k{i}") is not None for i in range(5)] == [False, False, True, True, True]
    assert store.size == 300


async def test_eviction_defaults_to_ninety_percent_of_the_limit(cache_dir: Path) -> None:
    bounded = Store(cache_dir, max_size=1000)
    try:
        # 1110 bytes; dropping the oldest leaves 960: under the limit but not under 90% of it.
        sizes = [150, 240, 240, 240, 240]
        entries = [publish(bounded, f"k{i}", bytes([i]) * size) for i, size in enumerate(sizes)]
        for i, entry in enumerate(entries):
            _age(entry, 1_000_000 + i)
        assert bounded.over_limit()

        assert await bounded.evict() == 390

        assert not bounded.over_limit()
        assert bounded.size == 720
        present = [bounded.get(f"k{i}") is not None for i in range(5)]
        assert present == [False, False, True, True, True]
    finally:
        bounded.close()


def test_a_store_under_its_limit_is_not_over_it(cache_dir: Path) -> None:
    bounded = Store(cache_dir, max_size=1000)
    try:
        publish(bounded, "k1", b"x" * 1000)
        assert not bounded.over_limit()
        publish(bounded, "k2", b"y")
        assert bounded.over_limit()
    finally:
        bounded.close()


# -- counters and maintenance -----------------------------------------------------------------


def test_counters_of_two_processes_add_up(store: Store, cache_dir: Path) -> None:
    other = Store(cache_dir, MAX_SIZE)
    try:
        store.count(Counter.HITS, 2)
        store.count(Counter.BYTES_FROM_CACHE, 1000)
        other.count(Counter.HITS)
        other.count(Counter.HITS, 2)
        other.count(Counter.MISSES)
        store.flush_counters()
        other.flush_counters()
        store.count(Counter.HITS)  # flushed by stats()
        assert maintenance.stats(store).counters == {
            "hits": 6,
            "misses": 1,
            "bytes_from_cache": 1000,
        }
        assert maintenance.stats(other).counters == {
            "hits": 6,
            "misses": 1,
            "bytes_from_cache": 1000,
        }
    finally:
        other.close()


def test_closing_a_store_flushes_its_counters(cache_dir: Path) -> None:
    first = Store(cache_dir, MAX_SIZE)
    first.count(Counter.STORED, 3)
    first.close()
    second = Store(cache_dir, MAX_SIZE)
    try:
        assert maintenance.stats(second).counters == {"stored": 3}
    finally:
        second.close()


def test_stats_count_entries_and_bytes(store: Store) -> None:
    publish(store, "k1", b"x" * 10)
    publish(store, "k2", b"y" * 20)
    stats = maintenance.stats(store)
    assert (stats.entries, stats.bytes) == (2, 30)


def test_clear_removes_every_entry(store: Store, cache_dir: Path) -> None:
    publish(store, "k1", b"x" * 10)
    publish(store, "k2", b"y" * 20)

    maintenance.clear(store)

    assert store.get("k1") is None
    assert store.get("k2") is None
    assert blob_files(cache_dir) == []
    assert store.size == 0
    stats = maintenance.stats(store)
    assert (stats.entries, stats.bytes) == (0, 0)
    publish(store, "k1", b"stored again")
    assert store.get("k1") is not None


def test_remembered_entries_follow_changes_made_by_another_process(
    store: Store, cache_dir: Path
) -> None:
    publish(store, "shared", b"small body")
    entry = store.get("shared")
    assert entry is not None and store.small_body(entry) == b"small body"
    other = Store(cache_dir, MAX_SIZE)
    try:
        refreshed = other.get("shared")
        assert refreshed is not None
        refreshed.headers = [(b"ETag", b'"v2"')]
        other.update_headers(refreshed)
        again = store.get("shared")
        assert again is not None and again.headers == [(b"ETag", b'"v2"')]
        maintenance.clear(other)
        assert store.get("shared") is None
    finally:
        other.close()


def test_small_bodies_are_read_once_and_large_ones_not_kept(store: Store) -> None:
    small = publish(store, "small", b"s" * 100)
    large = publish(store, "large", b"L" * (SMALL_BODY_BYTES + 1))
    assert store.small_body(small) == b"s" * 100
    small.body_path.unlink()  # evicted: the remembered bytes are still the right bytes
    assert store.small_body(small) == b"s" * 100
    assert store.small_body(large) is None


# -- body integrity ---------------------------------------------------------------------------


def flip_first_byte(path: Path) -> None:
    damaged = bytearray(path.read_bytes())
    damaged[0] ^= 0x01
    path.write_bytes(bytes(damaged))


def opened(seen: fsaudit.Recording, path: Path) -> bool:
    return any(event.event == "open" for event in seen.touching(path))


@pytest.mark.parametrize("size", [100, SMALL_BODY_BYTES + 1], ids=["small", "large"])
async def test_a_body_this_process_published_is_verified_without_reading_it(
    store: Store, size: int
) -> None:
    entry = publish(store, "k1", b"x" * size)
    with fsaudit.recording() as seen:
        assert await store.verified(entry)
    assert not opened(seen, entry.body_path)


@pytest.mark.parametrize("size", [100, SMALL_BODY_BYTES + 1], ids=["small", "large"])
async def test_a_corrupted_body_fails_verification_and_is_removed(
    store: Store, cache_dir: Path, size: int
) -> None:
    entry = publish(store, "k1", b"x" * size)
    flip_first_byte(entry.body_path)
    other = Store(cache_dir, MAX_SIZE)  # another process: it has hashed nothing yet
    try:
        assert not await other.verified(entry)
        assert not entry.body_path.exists()
    finally:
        other.close()


async def test_verification_is_remembered_until_the_file_changes(
    store: Store, cache_dir: Path
) -> None:
    entry = publish(store, "k1", b"L" * (SMALL_BODY_BYTES + 1))
    other = Store(cache_dir, MAX_SIZE)
    try:
        with fsaudit.recording() as first:
            assert await other.verified(entry)
        assert opened(first, entry.body_path)
        with fsaudit.recording() as again:
            assert await other.verified(entry)
            other.touch(entry)  # a hit marks it used: still the same bytes
            assert await other.verified(entry)
        assert not opened(again, entry.body_path)
        stat = entry.body_path.stat()
        os.utime(entry.body_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        with fsaudit.recording() as changed:
            assert await other.verified(entry)
        assert opened(changed, entry.body_path)
    finally:
        other.close()
