"""Importing a hostile cache archive (a tampered CI cache): metadata whose digest names a path,
member names that climb out, links, sizes that disagree, gzip bombs. The importer writes
nothing outside the cache dir, never writes more of a body than its metadata declares, and the
proxy never serves a file the archive pointed at."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from transcache import Proxy
from transcache.store import Store
from transcache.store.archive import import_archive
from transcache.store.layout import key_digest

from . import fsaudit
from .clients import curl
from .origin import Origin, client_env

MiB = 1024 * 1024
MAX_SIZE = 10 * MiB
SECRET = b"another user's secret\n"
BOMB_BYTES = 200 * MiB


def meta_name(key: str) -> str:
    digest = key_digest(key)
    return f"v1/meta/{digest[:2]}/{digest[2:4]}/{digest}"


def blob_name(digest: str) -> str:
    return f"v1/blobs/{digest[:2]}/{digest[2:4]}/{digest}"


def entry_record(url: str, digest: str, size: int) -> dict[str, object]:
    """The metadata the cache stores for `url` (no Vary: the empty variant)."""
    return {
        "key": url + "\n",
        "url": url,
        "status": 200,
        "reason": "OK",
        "headers": [["Content-Type", "application/octet-stream"]],
        "digest": digest,
        "size": size,
        "request_time": 1000.0,
        "response_time": 1001.0,
        "kind": "http",
    }


class Zeros(io.RawIOBase):
    """`size` zero bytes, made as they are read: a bomb never held in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


class ArchiveBuilder:
    def __init__(self, path: Path) -> None:
        self.tar = tarfile.open(path, "w:gz")  # zeros shrink a thousandfold: 200 MiB, 200 KB

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def add_zeros(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        self.tar.addfile(info, io.BufferedReader(Zeros(size)))

    def add_link(self, name: str, target: Path, kind: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, str(target)
        self.tar.addfile(info)

    def add_entry(self, url: str, digest: str, size: int) -> None:
        """An entry's metadata and the index record a lookup reads first."""
        self.add(meta_name(url + "\n"), json.dumps(entry_record(url, digest, size)).encode())
        self.add(meta_name(url), json.dumps({"key": url, "vary": []}).encode())

    def close(self) -> None:
        self.tar.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "cache", MAX_SIZE)
    yield opened
    opened.close()


def test_a_hostile_archive_writes_nothing_outside_the_cache_and_plants_nothing(
    origin: Origin, origin_ca_pem: Path, tmp_path: Path, home: Path, store: Store
) -> None:
    planted = tmp_path / "secret.txt"
    planted.write_bytes(SECRET)
    secret_digest = hashlib.sha256(SECRET).hexdigest()
    good = b"an honest wheel"
    good_digest = hashlib.sha256(good).hexdigest()
    url = {
        name: origin.url("files.test", f"/{name}.whl")
        for name in ("absolute", "dotdot", "symlink", "hardlink", "mismatch", "good")
    }
    archive = tmp_path / "hostile.tar.gz"
    builder = ArchiveBuilder(archive)
    for name in ("../escaped", str(tmp_path / "escaped"), "v1/blobs/../../../escaped"):
        builder.add(name, b"evil")
    builder.add_link(blob_name(secret_digest), planted, tarfile.SYMTYPE)
    builder.add_link(blob_name(secret_digest), planted, tarfile.LNKTYPE)
    builder.add(blob_name(good_digest), good)
    # The blob path is built from the digest: absolute, or `..` climbing from the shard.
    builder.add_entry(url["absolute"], str(planted), len(SECRET))
    builder.add_entry(url["dotdot"], "../.." + str(planted), len(SECRET))
    builder.add_entry(url["symlink"], secret_digest, len(SECRET))
    builder.add_entry(url["mismatch"], good_digest, len(good) + 1)
    builder.add_entry(url["good"], good_digest, len(good))
    builder.close()

    with fsaudit.recording() as imported:
        result = import_archive(store, archive)
    assert imported.writes_outside(store.layout.root.parent) == []
    assert imported.touching(planted) == []
    assert not (tmp_path / "escaped").exists()
    assert result.entries == 1  # the good one
    skipped = "\n".join(result.skipped)
    assert skipped.count("not a cache file") == 5  # three names, two links
    assert f"{url['absolute']}: malformed metadata" in skipped
    assert f"{url['dotdot']}: malformed metadata" in skipped
    assert f"{url['symlink']}: its body is missing or corrupt" in skipped

    options: dict[str, Any] = {
        "cache_dir": store.layout.root.parent,
        "ca_dir": tmp_path / "ca",
        "upstream_ca": [origin_ca_pem],
        "resolve": [f"files.test:{origin.port}:127.0.0.1"],
        "offline": True,
    }
    with fsaudit.recording() as served, Proxy(**options) as proxy:
        env = client_env(home, proxy.env)
        for name in ("absolute", "dotdot", "symlink", "mismatch"):
            answer = curl(env, "--output", "-", "--write-out", "%{http_code}", url[name])
            assert answer.stdout.endswith("504"), (name, answer.stdout)
            assert SECRET.decode() not in answer.stdout
        answer = curl(env, url["good"])
        assert answer.stdout == good.decode()
    assert served.touching(planted) == []
    assert planted.read_bytes() == SECRET


@pytest.mark.parametrize(
    ("declared", "member"),
    [
        pytest.param(1024, BOMB_BYTES, id="metadata-says-1KiB"),
        pytest.param(None, BOMB_BYTES, id="no-metadata"),
        pytest.param(MAX_SIZE + 1, MAX_SIZE + 1, id="larger-than-the-cache"),
    ],
)
def test_a_gzip_bomb_is_skipped_before_anything_is_written(
    tmp_path: Path, store: Store, declared: int | None, member: int
) -> None:
    url = "https://files.test/bomb.whl"
    digest = hashlib.sha256(b"whatever the bomb claims to be").hexdigest()
    archive = tmp_path / "bomb.tar.gz"
    builder = ArchiveBuilder(archive)
    builder.add_zeros(blob_name(digest), member)
    if declared is not None:
        builder.add_entry(url, digest, declared)
    builder.close()
    assert archive.stat().st_size < member // 500  # a bomb indeed

    with fsaudit.recording() as imported:
        result = import_archive(store, archive)
    # Not one byte of the bomb reached the disk: no file was even opened for writing.
    assert [e for e in imported.events if e.writes] == []
    assert (result.entries, result.bodies) == (0, 0)
    assert any(digest in line for line in result.skipped), result.skipped
