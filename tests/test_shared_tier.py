"""The shared tier against a real S3 server (SeaweedFS on loopback), with caches in-process in
front of scripted origins: what one proxy stored, another with an empty cache dir serves
without asking its origin, byte for byte; and faults, trust and privacy of what is shared."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from tests.clients import curl
from tests.conftest import StartProxy
from tests.origin import Origin, client_env, pattern
from tests.s3server import DIRECT, S3Server, aws_environment, running_s3
from tests.squid import Squid, running_squid
from tests.test_cache_inprocess import ORIGIN, FakeOrigin, Scripted, answer, fetch, read_all
from transcache._config import build_config
from transcache._errors import OfflineMissError, ProxyError
from transcache._limits import ConnectionSlots
from transcache._observe import Observer
from transcache._protocol import Headers
from transcache.cache import Cache, CacheRequest, Outcome
from transcache.cli import main
from transcache.store import Counter, Store
from transcache.tiers.breaker import BreakerState
from transcache.tiers.shared import CHECKED_FIRST_BYTES
from transcache.tiers.trust import generate_pair

pytestmark = pytest.mark.slow

PAGE = b"<html>shared</html>"
IMMUTABLE = [(b"Cache-Control", b"max-age=31536000, immutable")]
SECRET_KEY = "tier-test-secret"  # SeaweedFS's test identity below; nothing real


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(autouse=True)
def aws_variables(monkeypatch: pytest.MonkeyPatch, s3: S3Server, tmp_path: Path) -> None:
    """The endpoint by AWS_ENDPOINT_URL, no credentials from this machine, no instance
    metadata probe, and proxy variables that point nowhere: the tier must not use them."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_environment(s3.endpoint, tmp_path).items():
        monkeypatch.setenv(name, value)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")


_prefixes = iter(range(10**6))


@pytest.fixture
def location(s3: S3Server) -> str:
    """A prefix of its own per test, in the one bucket."""
    return f"s3://{s3.bucket}/t{next(_prefixes)}-{time.monotonic_ns()}"


async def proxy(
    nursery: trio.Nursery,
    cache_dir: Path,
    origin: FakeOrigin,
    *,
    shift: float = 0.0,
    environ: Mapping[str, str] | None = None,
    **options: object,
) -> Cache:
    """A cache with its store in `cache_dir`, configured as `transcache run` would be by
    `options` and the parent proxy variables of `environ`."""
    config = build_config(
        {"cache_dir": cache_dir, "ca_dir": cache_dir / "ca", **options}, None, environ
    )
    cache = Cache(config, Store(cache_dir, config.max_size), origin, lambda: time.time() + shift)
    await nursery.start(cache.run)
    return cache


async def settle(cache: Cache) -> None:
    """Until the downloads under way are stored and their uploads have ended."""
    await cache.downloads.wait_idle()
    assert cache.shared is not None
    await cache.shared.tier.wait_idle()


async def stored_by(
    nursery: trio.Nursery,
    cache_dir: Path,
    path: str = "/page.html",
    headers: Headers = IMMUTABLE,
    *lines: bytes,
    **options: object,
) -> Cache:
    """A proxy that fetched PAGE at `path` (its origin answering with `headers`), stored it
    and uploaded what it uploads."""
    origin = FakeOrigin(Scripted(headers=headers, chunks=[PAGE]))
    cache = await proxy(nursery, cache_dir, origin, **options)  # type: ignore[arg-type]
    assert (await fetch(cache, path, *lines))[0] == PAGE
    await settle(cache)
    return cache


def answers(body: bytes) -> Scripted:
    return Scripted(headers=IMMUTABLE, chunks=[body], pace=0)


def counters(cache: Cache) -> dict[str, int]:
    assert cache.store is not None
    return cache.store.counters.read()


def objects(s3: S3Server, location: str) -> list[str]:
    prefix = location.removeprefix(f"s3://{s3.bucket}/")
    url = f"{s3.endpoint}/{s3.bucket}?list-type=2&prefix={prefix}/"
    with DIRECT.open(url, timeout=10) as answer:
        listing = answer.read().decode()
    return [part.partition("</Key>")[0] for part in listing.split("<Key>")[1:]]


def overwrite(s3: S3Server, name: str, data: bytes) -> None:
    request = urllib.request.Request(f"{s3.endpoint}/{s3.bucket}/{name}", data=data, method="PUT")
    with DIRECT.open(request, timeout=10):
        pass


async def test_what_one_proxy_stored_another_serves_without_its_origin(
    nursery: trio.Nursery, tmp_path: Path, location: str, s3: S3Server
) -> None:
    origin_a = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[PAGE]))
    a = await proxy(nursery, tmp_path / "a", origin_a, shared_cache=location)
    assert (await fetch(a, "/page.html"))[0] == PAGE
    await settle(a)
    assert counters(a)[Counter.SHARED_UPLOADS] == 1
    assert any("/v1/blobs/" in name for name in objects(s3, location))

    origin_b = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[b"the origin was asked"]))
    b = await proxy(nursery, tmp_path / "b", origin_b, shared_cache=location)
    body, outcome, status = await answer(b, "/page.html")
    assert body == PAGE and origin_b.requests == []
    assert outcome is Outcome.MISS  # for the client, a miss that was stored
    assert status == b"transcache; fwd=miss; fwd-status=200; stored"
    await settle(b)
    again, _ = await fetch(b, "/page.html")  # now from B's own disk
    assert again == PAGE and origin_b.requests == []
    seen = counters(b)
    assert seen[Counter.SHARED_HITS] == 1 and seen[Counter.SHARED_BYTES] == len(PAGE)
    assert seen.get(Counter.SHARED_UPLOADS, 0) == 0  # taken from the tier: not sent back


async def test_a_resolve_entry_for_the_buckets_host_is_used(
    nursery: trio.Nursery,
    tmp_path: Path,
    location: str,
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The endpoint by a name only --resolve knows, as for a bucket behind a name the
    # runner's DNS does not have.
    port = urlsplit(s3.endpoint).port
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://s3.test:{port}")
    resolve = [f"s3.test:{port}:127.0.0.1"]
    await stored_by(nursery, tmp_path / "a", shared_cache=location, resolve=resolve)
    origin_b = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[b"the origin was asked"]))
    b = await proxy(nursery, tmp_path / "b", origin_b, shared_cache=location, resolve=resolve)
    assert (await fetch(b, "/page.html"))[0] == PAGE and origin_b.requests == []


async def test_a_large_body_goes_up_in_parts_and_comes_back_whole(
    nursery: trio.Nursery, tmp_path: Path, location: str
) -> None:
    body = hashlib.sha256(b"x").digest() * (40 * 1024 * 1024 // 32)  # 40 MiB: multipart
    chunks = [body[i : i + 1024 * 1024] for i in range(0, len(body), 1024 * 1024)]
    a = await proxy(
        nursery,
        tmp_path / "a",
        FakeOrigin(Scripted(headers=IMMUTABLE, chunks=chunks, pace=0)),
        shared_cache=location,
    )
    assert (await fetch(a, "/big.tar.gz"))[0] == body
    await settle(a)
    assert counters(a)[Counter.SHARED_UPLOAD_BYTES] == len(body)
    origin_b = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[b"no"]))
    b = await proxy(nursery, tmp_path / "b", origin_b, shared_cache=location)
    assert (await fetch(b, "/big.tar.gz"))[0] == body
    assert origin_b.requests == []


async def test_a_large_body_the_bucket_has_is_not_uploaded_again(
    nursery: trio.Nursery, tmp_path: Path, location: str
) -> None:
    body = b"y" * (2 * 1024 * 1024)  # over ASK_FIRST_BYTES: asked for before it goes up
    for name, path in (("a", "/one.tar.gz"), ("b", "/same-bytes.tar.gz")):
        origin = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[body], pace=0))
        cache = await proxy(nursery, tmp_path / name, origin, shared_cache=location)
        assert (await fetch(cache, path))[0] == body
        await settle(cache)
    assert counters(cache)[Counter.SHARED_UPLOADS] == 1  # B's metadata for its own key
    assert counters(cache).get(Counter.SHARED_UPLOAD_BYTES, 0) == 0  # A's body was there


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
async def test_a_damaged_body_in_the_bucket_is_never_served_or_stored(
    nursery: trio.Nursery, tmp_path: Path, location: str, s3: S3Server, damage: str
) -> None:
    await stored_by(nursery, tmp_path / "a", "/page.html", IMMUTABLE, shared_cache=location)
    blob = next(name for name in objects(s3, location) if "/v1/blobs/" in name)
    overwrite(s3, blob, PAGE[:-3] if damage == "truncated" else PAGE.upper())
    origin_b = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[b"from the origin"]))
    b = await proxy(nursery, tmp_path / "b", origin_b, shared_cache=location)
    assert (await fetch(b, "/page.html"))[0] == b"from the origin"
    await settle(b)
    assert (await fetch(b, "/page.html"))[0] == b"from the origin"  # stored: the origin's


async def test_a_large_corrupted_body_in_the_bucket_ends_short_once_then_is_mended(
    nursery: trio.Nursery, tmp_path: Path, location: str, s3: S3Server
) -> None:
    # Over CHECKED_FIRST_BYTES a body streams as it arrives, its last piece held back until
    # its size and sha256 match: a bad one ends its response short, is not read again, and
    # the origin's copy of the same bytes replaces it in the bucket.
    large = bytes(range(256)) * (CHECKED_FIRST_BYTES // 128)
    a = await proxy(nursery, tmp_path / "a", FakeOrigin(answers(large)), shared_cache=location)
    assert (await fetch(a, "/large.bin"))[0] == large
    await settle(a)
    [blob] = [name for name in objects(s3, location) if hashlib.sha256(large).hexdigest() in name]
    overwrite(s3, blob, large[:-1] + b"X")  # same size, one byte changed
    origin_b = FakeOrigin(answers(large))
    b = await proxy(nursery, tmp_path / "b", origin_b, shared_cache=location)
    with pytest.raises(ProxyError):
        await fetch(b, "/large.bin")  # never a complete-looking body
    await settle(b)
    assert origin_b.requests == []
    assert (await fetch(b, "/large.bin"))[0] == large  # from the origin: not read again
    await settle(b)
    assert len(origin_b.requests) == 1
    origin_c = FakeOrigin(answers(b"the origin was asked"))
    c = await proxy(nursery, tmp_path / "c", origin_c, shared_cache=location)
    assert (await fetch(c, "/large.bin"))[0] == large and origin_c.requests == []


async def test_with_a_verify_key_unsigned_and_mis_signed_entries_are_ignored(
    nursery: trio.Nursery, tmp_path: Path, location: str
) -> None:
    generate_pair(tmp_path / "signing.pem", tmp_path / "verify.pem")
    generate_pair(tmp_path / "other.pem", tmp_path / "other-verify.pem")
    for path, key in (
        ("/unsigned", None),
        ("/mis-signed", tmp_path / "other.pem"),
        ("/signed", tmp_path / "signing.pem"),
    ):
        writer = await proxy(
            nursery,
            tmp_path / f"w{path[1:]}",
            FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[PAGE])),
            shared_cache=location,
            shared_cache_signing_key=key,
        )
        await fetch(writer, path)
        await settle(writer)
    origin = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[b"origin"]))
    reader = await proxy(
        nursery,
        tmp_path / "r",
        origin,
        shared_cache=location,
        shared_cache_verify_key=tmp_path / "verify.pem",
    )
    assert reader.shared is not None and "signed entries only" in reader.shared.tier.description
    assert [(await fetch(reader, p))[0] for p in ("/unsigned", "/mis-signed", "/signed")] == [
        b"origin",
        b"origin",
        PAGE,
    ]


async def test_credentialed_entries_and_read_only_proxies_upload_nothing(
    nursery: trio.Nursery, tmp_path: Path, location: str, s3: S3Server
) -> None:
    public = [*IMMUTABLE, (b"Cache-Control", b"public")]
    await stored_by(
        nursery,
        tmp_path / "a",
        "/private.html",
        public,
        b"Authorization: Bearer t0ken",
        shared_cache=location,
    )
    ro = await proxy(
        nursery,
        tmp_path / "ro",
        FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[PAGE])),
        shared_cache=location,
        shared_cache_readonly=True,
    )
    await fetch(ro, "/page.html")
    await ro.downloads.wait_idle()
    assert ro.shared is not None
    await ro.shared.tier.wait_idle()
    assert objects(s3, location) == []


async def test_tier_entries_follow_the_freshness_rules(
    nursery: trio.Nursery, tmp_path: Path, location: str
) -> None:
    short = [(b"Cache-Control", b"max-age=60")]
    await stored_by(nursery, tmp_path / "a", "/page.html", short, shared_cache=location)
    fresh = FakeOrigin(Scripted(headers=short, chunks=[b"origin"]))
    b = await proxy(nursery, tmp_path / "b", fresh, shared_cache=location, shift=30)
    assert (await fetch(b, "/page.html"))[0] == PAGE
    later = FakeOrigin(Scripted(headers=short, chunks=[b"origin"]))
    c = await proxy(nursery, tmp_path / "c", later, shared_cache=location, shift=120)
    assert (await fetch(c, "/page.html"))[0] == b"origin"  # stale in the tier: the origin


async def test_a_stalled_tier_costs_each_miss_the_timeout_until_the_breaker_skips_it(
    nursery: trio.Nursery, tmp_path: Path, location: str, s3: S3Server
) -> None:
    origin = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[b"origin"]))
    b = await proxy(
        nursery,
        tmp_path / "b",
        origin,
        shared_cache=location,
        shared_cache_timeout=0.5,
        shared_cache_failures=3,
        shared_cache_skip=600,
    )
    s3.pause()
    try:
        errors = []
        for n in range(4):
            assert (await fetch(b, f"/p{n}"))[0] == b"origin"  # within the timeout
            await settle(b)  # the upload of what it stored, given up on too (or skipped)
            errors.append(counters(b).get(Counter.SHARED_ERRORS, 0))
    finally:
        s3.resume()
    # /p0's lookup and upload failed, then /p1's lookup: three in a row, and the tier is
    # skipped (/p1's upload, /p2, /p3: no more attempts).
    assert errors == [2, 3, 3, 3]
    assert b.shared is not None and b.shared.tier.last_error is not None
    assert b.shared.tier.breaker.state is BreakerState.OPEN


CI_IDENTITIES: dict[str, object] = {
    "identities": [
        {
            "name": "ci",
            "credentials": [{"accessKey": "tier-test-key", "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List"],
        }
    ]
}


@pytest.fixture(scope="module")
def signed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A second server, whose requests must be signed with CI_IDENTITIES' key."""
    with running_s3(tmp_path_factory.mktemp("signed-s3"), CI_IDENTITIES) as server:
        yield server


async def uploaded_and_served_again(nursery: trio.Nursery, tmp_path: Path, where: str) -> None:
    """A proxy whose requests the server accepts uploads PAGE; another, with an empty cache,
    serves it without asking its origin."""
    a = await stored_by(nursery, tmp_path / "a", shared_cache=where)
    assert a.shared is not None
    assert counters(a).get(Counter.SHARED_UPLOADS) == 1, a.shared.tier.last_error
    origin_b = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[b"origin"]))
    b = await proxy(nursery, tmp_path / "b", origin_b, shared_cache=where)
    assert (await fetch(b, "/page.html"))[0] == PAGE and origin_b.requests == []


async def test_with_identities_on_the_server_requests_are_signed_by_the_credential_chain(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signed_s3: S3Server
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", signed_s3.endpoint)
    where = f"s3://{signed_s3.bucket}/creds"
    anonymous = await stored_by(nursery, tmp_path / "anon", shared_cache=where)
    assert counters(anonymous).get(Counter.SHARED_UPLOADS, 0) == 0
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "tier-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    await uploaded_and_served_again(nursery, tmp_path, where)


async def test_aws_profile_takes_the_endpoint_and_keys_from_the_shared_config_files(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signed_s3: S3Server
) -> None:
    endpoint = f"endpoint_url = {signed_s3.endpoint}\n"
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\n{endpoint}\n[profile ci]\n{endpoint}")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = tier-test-key\naws_secret_access_key = wrong\n\n"
        f"[ci]\naws_access_key_id = tier-test-key\naws_secret_access_key = {SECRET_KEY}\n"
    )
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    where = f"s3://{signed_s3.bucket}/profile"
    default = await stored_by(nursery, tmp_path / "default", shared_cache=where)
    assert default.shared is not None and signed_s3.endpoint in default.shared.tier.description
    assert counters(default).get(Counter.SHARED_UPLOADS, 0) == 0  # the wrong secret: refused
    monkeypatch.setenv("AWS_PROFILE", "ci")
    await uploaded_and_served_again(nursery, tmp_path, where)


@pytest.fixture
def squid() -> Iterator[Squid]:
    with running_squid([]) as parent:
        yield parent


async def test_tier_traffic_goes_through_the_upstream_proxy_never_the_environments(
    nursery: trio.Nursery, tmp_path: Path, location: str, squid: Squid
) -> None:
    # The environment names a parent (in a proxy's environment, usually the proxy itself):
    # the tier does not use it. Only an --upstream-proxy carries its traffic.
    environ = {"https_proxy": squid.url, "http_proxy": squid.url}
    await stored_by(nursery, tmp_path / "a", shared_cache=location, environ=environ)
    origin_b = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[b"another page"]))
    b = await proxy(
        nursery,
        tmp_path / "b",
        origin_b,
        shared_cache=location,
        upstream_proxy=squid.url,
        environ=environ,
    )
    assert (await fetch(b, "/page.html"))[0] == PAGE and origin_b.requests == []
    assert (await fetch(b, "/other.html"))[0] == b"another page"
    await settle(b)
    assert counters(b)[Counter.SHARED_UPLOADS] == 1
    # B read /page.html (its metadata, its body), missed /other.html and uploaded it; the
    # upload of /page.html by A, with the same parent in its environment, went direct.
    seen = squid.wait_for(5)
    assert {line.user for line in seen} == {squid.user}
    kinds = Tally((line.method, line.url.rpartition("/v1/")[2].partition("/")[0]) for line in seen)
    assert kinds == {
        ("GET", "meta"): 2,
        ("GET", "blobs"): 1,
        ("PUT", "blobs"): 1,
        ("PUT", "meta"): 1,
    }


async def test_offline_reads_the_tier_and_no_shared_cache_is_the_strict_form(
    nursery: trio.Nursery, tmp_path: Path, location: str
) -> None:
    await stored_by(nursery, tmp_path / "a", "/page.html", IMMUTABLE, shared_cache=location)
    offline = await proxy(
        nursery, tmp_path / "o", FakeOrigin(), shared_cache=location, offline=True
    )
    assert (await fetch(offline, "/page.html"))[0] == PAGE
    strict = await proxy(nursery, tmp_path / "s", FakeOrigin(), shared_cache="", offline=True)
    with pytest.raises(OfflineMissError):
        source, _ = await strict.respond(CacheRequest(b"GET", ORIGIN, "/page.html", []))
        await read_all(source)


async def test_stats_metrics_and_the_status_page_count_tier_traffic(
    nursery: trio.Nursery, tmp_path: Path, location: str
) -> None:
    a = await stored_by(nursery, tmp_path / "a", "/page.html", IMMUTABLE, shared_cache=location)
    b = await proxy(nursery, tmp_path / "b", FakeOrigin(), shared_cache=location)
    await fetch(b, "/page.html")
    for cache, counted in (
        (a, b"transcache_shared_uploads_total 1.0"),
        (b, b"transcache_shared_hits_total 1.0"),
    ):
        observer = Observer(cache.config, cache, ConnectionSlots(10))
        assert counted in observer.metrics.render()[2]
        page = observer.status_page()[2].decode()
        assert "Shared cache" in page and "trusted as it is" in page
        stats = json.loads(observer.stats_page()[2])
        assert "trusted as it is" in stats["shared_cache"]
    stats = json.loads(Observer(b.config, b, ConnectionSlots(10)).stats_page()[2])
    assert stats["shared_hits"] == 1 and stats["shared_bytes"] == len(PAGE)


async def test_prune_deletes_what_was_written_before_the_cutoff(
    nursery: trio.Nursery, tmp_path: Path, location: str, s3: S3Server
) -> None:
    a = await stored_by(nursery, tmp_path / "a", "/page.html", IMMUTABLE, shared_cache=location)
    assert a.shared is not None
    assert await a.shared.tier.prune(time.time() - 3600) == 0  # nothing that old
    assert len(objects(s3, location)) == 2
    assert await a.shared.tier.prune(time.time() + 3600) == 2
    assert objects(s3, location) == []


def test_cache_keygen_and_prune_shared_from_the_command_line(
    tmp_path: Path, location: str, s3: S3Server, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = ["cache", "keygen", str(tmp_path / "sign.pem"), str(tmp_path / "verify.pem")]
    assert main(keys) == 0
    assert (tmp_path / "sign.pem").stat().st_mode & 0o077 == 0
    prefix = location.removeprefix(f"s3://{s3.bucket}/")
    for name in ("v1/meta/00/k", "v1/blobs/00/d"):
        overwrite(s3, f"{prefix}/{name}", b"old")
    prune = ["cache", "prune", "--shared", "--shared-cache", location]
    prune += ["--cache-dir", str(tmp_path / "c")]
    assert main([*prune, "--older-than", "30"]) == 0
    assert "deleted 0 objects older than 30 days" in capsys.readouterr().out
    assert len(objects(s3, location)) == 2
    time.sleep(1.1)  # the bucket dates objects to the second: let them age past one
    assert main([*prune, "--older-than", "0.00001"]) == 0  # 0.864 s
    assert "deleted 2 objects older than 1e-05 days" in capsys.readouterr().out
    assert objects(s3, location) == []


BIG = 100 * 1024 * 1024
RSS_LIMIT = 150 * 1024 * 1024  # as tests/test_streaming.py: a buffered 100 MiB body breaks it


def test_two_proxy_processes_share_a_100_mib_body_through_the_bucket_in_flat_memory(
    origin: Origin, start_proxy: StartProxy, tmp_path: Path, location: str, s3: S3Server
) -> None:
    flags = ["--shared-cache", location, "--immutable", "*/bytes/*"]
    url = origin.url("files.test", f"/bytes/{BIG}")
    a = start_proxy(origin, args=flags, name="a")
    written = curl(
        client_env(tmp_path / "home", a.env()), "-o", "/dev/null", "-w", "%{size_download}", url
    )
    assert written.stdout == str(BIG)
    deadline = time.monotonic() + 60
    while not any("/v1/meta/" in name for name in objects(s3, location)):  # uploaded
        assert time.monotonic() < deadline, a.log
        time.sleep(0.1)
    b = start_proxy(origin, args=flags, name="b")
    out = tmp_path / "from-b"
    curl(client_env(tmp_path / "home", b.env()), "--output", str(out), url)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(pattern(BIG)).digest()
    assert len(origin.requests_to(f"/bytes/{BIG}")) == 1  # B asked the bucket, not the origin
    assert b.peak_rss_bytes() < RSS_LIMIT and a.peak_rss_bytes() < RSS_LIMIT


async def test_a_proxy_stopped_right_after_a_download_still_uploads_it(
    nursery: trio.Nursery, tmp_path: Path, location: str
) -> None:
    origin = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[PAGE]))
    async with trio.open_nursery() as running:
        a = await proxy(running, tmp_path / "a", origin, shared_cache=location)
        assert (await fetch(a, "/page.html"))[0] == PAGE
        await a.downloads.wait_idle()  # stored locally, its upload queued
        running.cancel_scope.cancel()  # the CI job ends and stops its proxy
    origin_b = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[b"origin"]))
    b = await proxy(nursery, tmp_path / "b", origin_b, shared_cache=location)
    assert (await fetch(b, "/page.html"))[0] == PAGE and origin_b.requests == []


async def test_with_the_s3_server_stopped_both_proxies_serve_from_local_and_origin(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_s3(tmp_path / "s3") as own:
        monkeypatch.setenv("AWS_ENDPOINT_URL", own.endpoint)
        where = f"s3://{own.bucket}/down"
        a = await stored_by(nursery, tmp_path / "a", shared_cache=where)
        assert counters(a).get(Counter.SHARED_UPLOADS) == 1
        own.stop()  # the bucket goes away: connections are refused
        assert await fetch(a, "/page.html") == (PAGE, Outcome.HIT)  # local
        new = FakeOrigin(Scripted(headers=IMMUTABLE, chunks=[b"new"]))
        b = await proxy(nursery, tmp_path / "b", new, shared_cache=where)
        assert await fetch(b, "/page.html") == (b"new", Outcome.MISS)  # the origin's
        assert counters(b).get(Counter.SHARED_ERRORS, 0) >= 1  # the tier was tried
        assert await fetch(b, "/page.html") == (b"new", Outcome.HIT)  # then local
