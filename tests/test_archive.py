"""`transcache cache export` / `import`: a warm cache moves through an archive (all of it, a
URL pattern, or what a run used), an offline run from the imported cache needs no origin, and
import publishes only bodies whose sha256 is their name."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from transcache import Proxy
from transcache.cli import main
from transcache.store import Entry, Store, maintenance

from .clients import pip_download, run
from .origin import Origin, client_env
from .packages import make_index

MAX_SIZE = 10 * 1024 * 1024
WHEEL_URL = "https://files.test/files/pkg-1.0-py3-none-any.whl"
PAGE_URL = "https://index.test/simple/pkg/"


def transcache(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(list(args))
    return status, capsys.readouterr().out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "source", MAX_SIZE)
    yield opened
    opened.close()


def publish(store: Store, url: str, body: bytes) -> Entry:
    """Store `url` as the cache does: the entry (no Vary: empty variant) and its index record."""
    writer = store.begin()
    writer.write(body)
    entry = store.publish(
        writer.finish(),
        {
            "key": url + "\n",
            "url": url,
            "status": 200,
            "reason": b"OK",
            "headers": [(b"Content-Type", b"application/octet-stream")],
            "request_time": 1000.0,
            "response_time": 1001.0,
        },
    )
    store.write_index(url, ())
    return entry


def listed_urls(capsys: pytest.CaptureFixture[str], cache_dir: Path) -> list[str]:
    status, out = transcache(capsys, "cache", "ls", "--cache-dir", str(cache_dir))
    assert status == 0
    return [line.split()[-1] for line in out.splitlines()]


def test_offline_run_from_an_imported_cache_succeeds(
    origin: Origin,
    origin_ca_pem: Path,
    tmp_path: Path,
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_index(origin, tmp_path / "dists")
    options: dict[str, Any] = {
        "ca_dir": tmp_path / "ca",
        "upstream_ca": [origin_ca_pem],
        "resolve": [f"index.test:{origin.port}:127.0.0.1"],
    }
    with Proxy(**options, cache_dir=tmp_path / "ci-run") as proxy:
        run(
            pip_download(origin.url("index.test", "/simple/"), tmp_path / "cold", "alpha"),
            client_env(home, proxy.env),
        )
    archive = tmp_path / "restore" / "cache.tar.gz"
    status, out = transcache(
        capsys, "cache", "export", "--cache-dir", str(tmp_path / "ci-run"), str(archive)
    )
    assert status == 0, out
    assert "exported 6 entries" in out  # two index pages, two metadata files, two wheels
    status, out = transcache(
        capsys, "cache", "import", "--cache-dir", str(tmp_path / "restored"), str(archive)
    )
    assert status == 0, out
    assert "imported 6 entries" in out
    requests_before = len(origin.requests)
    with Proxy(**options, cache_dir=tmp_path / "restored", offline=True) as proxy:
        run(
            pip_download(origin.url("index.test", "/simple/"), tmp_path / "offline", "alpha"),
            client_env(home, proxy.env),
        )
    assert proxy.stats().total.offline_misses == []
    assert origin.requests[requests_before:] == []
    assert sorted(p.name for p in (tmp_path / "offline").iterdir()) == sorted(
        p.name for p in (tmp_path / "cold").iterdir()
    )


def test_export_takes_only_entries_whose_url_matches_the_pattern(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(store, WHEEL_URL, b"wheel bytes")
    publish(store, PAGE_URL, b"<html>index</html>")
    archive = tmp_path / "wheels.tar.gz"
    status, out = transcache(
        capsys,
        "cache",
        "export",
        "--cache-dir",
        str(store.layout.root.parent),
        str(archive),
        "*.whl",
    )
    assert status == 0
    assert "exported 1 entry (1 body, 11 bytes)" in out
    status, _ = transcache(
        capsys, "cache", "import", "--cache-dir", str(tmp_path / "b"), str(archive)
    )
    assert status == 0
    assert listed_urls(capsys, tmp_path / "b") == [WHEEL_URL]


def test_export_since_takes_the_entries_a_run_used(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bodies' mtimes are touched on every hit: an entry last used before the run is left out."""
    old = publish(store, PAGE_URL, b"an old page")
    publish(store, WHEEL_URL, b"used in this run")
    run_started = time.time() - 60
    os.utime(old.body_path, (run_started - 3600, run_started - 3600))
    archive = tmp_path / "run.tar.gz"
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(run_started))
    status, _ = transcache(
        capsys,
        "cache",
        "export",
        "--cache-dir",
        str(store.layout.root.parent),
        "--since",
        since,
        str(archive),
    )
    assert status == 0
    status, _ = transcache(
        capsys, "cache", "import", "--cache-dir", str(tmp_path / "b"), str(archive)
    )
    assert status == 0
    assert listed_urls(capsys, tmp_path / "b") == [WHEEL_URL]


def rewrite_archive(source: Path, target: Path, change: dict[str, bytes]) -> None:
    """Copy an archive, replacing the contents of the members named in `change`."""
    with tarfile.open(source, "r:gz") as old, tarfile.open(target, "w:gz") as new:
        for member in old:
            data = old.extractfile(member)
            assert data is not None
            content = change.get(member.name, data.read())
            member.size = len(content)
            new.addfile(member, io.BytesIO(content))


def test_import_skips_a_corrupt_body_and_its_entry(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel = publish(store, WHEEL_URL, b"wheel bytes")
    publish(store, PAGE_URL, b"<html>index</html>")
    archive = tmp_path / "all.tar.gz"
    transcache(
        capsys, "cache", "export", "--cache-dir", str(store.layout.root.parent), str(archive)
    )
    digest = wheel.digest
    corrupt = tmp_path / "corrupt.tar.gz"
    blob_name = f"v1/blobs/{digest[:2]}/{digest[2:4]}/{digest}"
    rewrite_archive(archive, corrupt, {blob_name: b"WHEEL BYTES"})  # same size, other bytes
    status, out = transcache(
        capsys, "cache", "import", "--cache-dir", str(tmp_path / "b"), str(corrupt)
    )
    assert status == 1
    assert f"skipped body {digest}: corrupt" in out
    assert f"skipped {WHEEL_URL}: its body is missing or corrupt" in out
    assert listed_urls(capsys, tmp_path / "b") == [PAGE_URL]
    restored = Store(tmp_path / "b", MAX_SIZE)
    try:
        assert maintenance.verify(restored) == (1, [])  # nothing damaged was published
    finally:
        restored.close()


def test_import_writes_nothing_outside_the_cache_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("../escaped", "v1/meta/../../escaped", "/tmp/escaped"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    status, out = transcache(
        capsys, "cache", "import", "--cache-dir", str(tmp_path / "b"), str(archive)
    )
    assert status == 1
    assert out.count("not a cache file") == 3
    assert not (tmp_path / "escaped").exists()
    assert listed_urls(capsys, tmp_path / "b") == []


def test_import_of_something_that_is_not_an_archive_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(gzip.compress(b"not a tar file at all"))
    status = main(["cache", "import", "--cache-dir", str(tmp_path / "b"), str(bogus)])
    assert status == 1
    assert "not a cache archive" in capsys.readouterr().err
