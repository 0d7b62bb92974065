"""Cache files are the user's alone: responses stored for credentialed requests live there.
Directories are 0700 and files 0600 whatever the umask, for bodies, metadata, temp files,
counters, imported entries and exported archives."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from transcache.store import Counter, Store
from transcache.store.archive import export_archive, import_archive

from .test_archive import publish

MAX_SIZE = 10 * 1024 * 1024
URL = "https://files.test/files/pkg-1.0-py3-none-any.whl"


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(root: Path) -> dict[str, str]:
    """Every path under `root` (and root) whose mode is not owner-only, with its mode."""
    wrong = {}
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong[str(path.relative_to(root.parent))] = oct(mode)
    return wrong


def test_cache_files_and_directories_are_owner_only(tmp_path: Path, umask: int) -> None:
    source = Store(tmp_path / "source", MAX_SIZE)
    target = Store(tmp_path / "target", MAX_SIZE)
    try:
        publish(source, URL, b"wheel bytes")
        source.count(Counter.HITS)
        source.flush_counters()
        in_progress = source.begin()  # a body still arriving: a temp file
        in_progress.write(b"partial")
        archive = tmp_path / "out" / "cache.tar.gz"
        export_archive(source, archive)
        result = import_archive(target, archive)
        assert result.entries == 1
        assert modes(tmp_path / "source") == {}
        assert modes(tmp_path / "target") == {}
        assert oct(stat.S_IMODE(archive.stat().st_mode)) == oct(0o600)
        in_progress.abort()
    finally:
        source.close()
        target.close()


def test_an_existing_world_readable_cache_is_closed_at_open(tmp_path: Path, umask: int) -> None:
    """A cache made by an older version (0755 directories) is shut to other users."""
    store = Store(tmp_path / "cache", MAX_SIZE)
    publish(store, URL, b"wheel bytes")
    store.close()
    for path in [tmp_path / "cache", *(tmp_path / "cache").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    Store(tmp_path / "cache", MAX_SIZE).close()
    assert oct(stat.S_IMODE((tmp_path / "cache" / "v1").stat().st_mode)) == oct(0o700)
