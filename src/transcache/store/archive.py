"""Cache archives (`transcache cache export` / `import`): move a warm cache through a CI
job's own cache action.

An archive is a gzip-compressed tar of store files, named as in the store:

    v1/blobs/ab/cd/<sha256(body)>   the bodies, first
    v1/meta/ab/cd/<sha256(key)>     then each entry's metadata, then the Vary index records
                                    of their keys (what a lookup reads before the entry)

Export picks entries whose URL matches a shell pattern and, with `since`, those used since a
time: a body's modification time is touched on every hit, so `since` = the start of a CI run
picks what the run used (an entry stored or served during it).

Import treats the archive as hostile (a CI cache can be tampered with). Only regular files
with the names above are read; links, other names and other types are skipped. It reads the
archive twice: first the metadata, which is validated whole (a digest is a sha256, never a
path) and says which bodies to expect and their sizes; then the bodies. A body is written
only if an entry names it, its tar header's size is one an entry declares, and it fits in the
cache's max size and the free disk space; no more than that size is ever read. So a gzip bomb
writes nothing. Each body is written into the store's temp dir while it is hashed and
published (renamed into place) only if its hash is its name; metadata is published (temp
file + rename) only if its name is the hash of its key and, for an entry, its body is in the
store with the stated size. Anything else is skipped and reported. The store's own publish
steps are used, so importing into a cache a proxy is serving is safe; an entry already in the
cache that is at least as recent as the imported one is kept.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .blobs import HASH_CHUNK
from .layout import FILE_MODE, LAYOUT, Area, key_digest, member_name, shard_path
from .maintenance import Progress, no_progress
from .maintenance import entries as stored_entries
from .metadata import Entry, MetadataError, VaryIndex, parse_record
from .store import Store

# The archive names what it may hold; nothing else is ever written to disk.
MEMBER = re.compile(
    rf"{LAYOUT}/(?P<area>{Area.BLOBS}|{Area.META})/(?P<a>[0-9a-f]{{2}})/(?P<b>[0-9a-f]{{2}})/"
    r"(?P<digest>[0-9a-f]{64})"
)
# Plain files only: no links, devices, or sparse members (whose size is not what is stored).
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
MAX_META_BYTES = 1024 * 1024


@dataclass
class ArchiveResult:
    """What an export wrote or an import published; `skipped` says what and why."""

    entries: int = 0
    bodies: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


# -- export ---------------------------------------------------------------------------------


def select(store: Store, pattern: str = "*", since: float | None = None) -> list[Entry]:
    """The entries whose URL matches `pattern`, used (stored or hit) at or after `since`."""
    chosen = []
    for entry in stored_entries(store):
        if not fnmatch.fnmatchcase(entry.url, pattern):
            continue
        if since is not None:
            try:
                if entry.body_path.stat().st_mtime < since:
                    continue
            except OSError:
                continue  # evicted meanwhile
        chosen.append(entry)
    return sorted(chosen, key=lambda e: e.key)


def export_archive(
    store: Store,
    path: Path,
    pattern: str = "*",
    since: float | None = None,
    progress: Progress = no_progress,
) -> ArchiveResult:
    """Write the selected entries to `path` (tar.gz), atomically: a reader never sees half an
    archive. An entry whose body vanishes while exporting is left out. Progress counts the
    selected entries' body bytes."""
    result = ArchiveResult()
    chosen = select(store, pattern, since)
    total, done = sum(entry.size for entry in chosen), 0
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            bodies: set[str] = set()
            exported = []
            for entry in chosen:
                progress(done, total)
                done += entry.size
                if _add_body(tar, entry, bodies, result):
                    exported.append(entry)
            progress(total, total)
            for entry in exported:
                _add_bytes(tar, member_name(Area.META, key_digest(entry.key)), entry.to_json())
                result.entries += 1
            for index in _index_records(store, exported):
                _add_bytes(tar, member_name(Area.META, key_digest(index.key)), index.to_json())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return result


def _add_body(tar: tarfile.TarFile, entry: Entry, added: set[str], result: ArchiveResult) -> bool:
    if entry.digest in added:
        return True  # a body shared by several entries goes in once
    try:
        with entry.body_path.open("rb") as body:
            stat = os.fstat(body.fileno())
            info = tarfile.TarInfo(member_name(Area.BLOBS, entry.digest))
            info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), FILE_MODE
            tar.addfile(info, body)
    except OSError:
        result.skipped.append(f"{entry.url}: its body is gone")
        return False
    added.add(entry.digest)
    result.bodies += 1
    result.bytes += info.size
    return True


def _add_bytes(tar: tarfile.TarFile, name: str, record: dict[str, Any]) -> None:
    data = json.dumps(record, separators=(",", ":")).encode()
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), FILE_MODE
    tar.addfile(info, io.BytesIO(data))


def _index_records(store: Store, entries: list[Entry]) -> list[VaryIndex]:
    """The Vary index records of the entries' keys."""
    found = (store.vary_index(primary) for primary in sorted(_primary_keys(e.key for e in entries)))
    return [index for index in found if index is not None]


def _primary_keys(keys: Iterable[str]) -> set[str]:
    """The keys an index record may have for entries with these keys. An entry's key is its
    primary key, a newline and its variant; a primary key may itself hold newlines (git keys
    do), so every prefix ending before a newline is a candidate."""
    return {key[:i] for key in keys for i, char in enumerate(key) if char == "\n"}


# -- import ---------------------------------------------------------------------------------


def import_archive(store: Store, path: Path, progress: Progress = no_progress) -> ArchiveResult:
    """Publish the archive's verified bodies and the entries whose bodies are present.
    Raises OSError (and tarfile.TarError) when the archive cannot be read at all. Progress
    counts the archive's (compressed) bytes read, twice: once per pass."""
    result = ArchiveResult()
    entries: dict[str, Entry] = {}
    records: dict[str, VaryIndex] = {}
    total = 2 * path.stat().st_size
    with path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
        for member, area, digest in _cache_members(tar, result):
            progress(raw.tell(), total)
            if area is Area.META:
                record = _take_meta(store, tar, member, digest, result)
                if isinstance(record, Entry):
                    entries[record.key] = record
                elif record is not None:
                    records[record.key] = record
    # Exports put bodies first, so the bodies are read in a second pass, once their metadata
    # has said which to expect and how large each is.
    sizes: dict[str, set[int]] = {}
    for entry in entries.values():
        sizes.setdefault(entry.digest, set()).add(entry.size)
    with path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
        for member, area, digest in _cache_members(tar, None):
            progress(total // 2 + raw.tell(), total)
            if area is Area.BLOBS:
                _import_body(store, tar, member, digest, sizes.get(digest, set()), result)
    progress(total, total)
    imported = [key for key, entry in entries.items() if _import_entry(store, entry, result)]
    result.entries = len(imported)
    wanted = _primary_keys(imported)
    for key, index in records.items():
        if key in wanted:
            store.write_index(key, index.fields)
    return result


def _cache_members(
    tar: tarfile.TarFile, result: ArchiveResult | None
) -> Iterator[tuple[tarfile.TarInfo, Area, str]]:
    """The members that are cache files: (member, their area, digest). The others
    are reported as skipped in `result`, when given."""
    for member in tar:
        match = MEMBER.fullmatch(member.name)
        if member.type not in FILE_TYPES or match is None or not _shard_matches(match):
            if result is not None:
                result.skipped.append(f"{member.name}: not a cache file")
            continue
        yield member, Area(match["area"]), match["digest"]


def _shard_matches(match: re.Match[str]) -> bool:
    digest = match["digest"]
    return match["a"] == digest[:2] and match["b"] == digest[2:4]


def _take_meta(
    store: Store,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    digest: str,
    result: ArchiveResult,
) -> Entry | VaryIndex | None:
    """The member's record, validated; None (and reported) when it is not usable."""
    source = tar.extractfile(member)
    data = None if source is None else _read_meta(source, member.size)
    if data is None or key_digest(data["key"]) != digest:
        result.skipped.append(f"{member.name}: metadata that does not match its name")
        return None
    try:
        return parse_record(data, store.layout.blobs)
    except MetadataError as exc:
        result.skipped.append(f"{data.get('url', data['key'])}: malformed metadata ({exc})")
        return None


def _import_body(
    store: Store,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    digest: str,
    declared: set[int],
    result: ArchiveResult,
) -> None:
    size = member.size
    if shard_path(store.layout.blobs, digest).exists():
        return  # the same bytes are stored already
    problem = None
    if not declared:
        problem = "no entry in the archive names it"
    elif size not in declared:
        problem = f"{size} bytes in the archive, but its entry says {min(declared)}"
    elif size > store.max_size:
        problem = f"{size} bytes, more than the cache's max size ({store.max_size})"
    elif size > shutil.disk_usage(store.layout.tmp).free:
        problem = f"{size} bytes, more than the free disk space"
    source = tar.extractfile(member)
    if problem is not None or source is None:
        result.skipped.append(f"body {digest}: {problem}")
        return
    writer = store.begin()
    try:
        left = size
        while left and (chunk := source.read(min(HASH_CHUNK, left))):
            writer.write(chunk)
            left -= len(chunk)
        blob = writer.finish_if(digest) if writer.written == size else None
    except BaseException:
        writer.abort()
        raise
    if blob is not None:
        store.add_blob(blob)
        result.bodies += 1
        result.bytes += size
    else:
        writer.abort()
        result.skipped.append(f"body {digest}: corrupt (its sha256 is not its name)")


def _read_meta(source: IO[bytes], size: int) -> dict[str, Any] | None:
    if size > MAX_META_BYTES:
        return None
    try:
        data = json.loads(source.read(size))
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("key"), str) else None


def _import_entry(store: Store, entry: Entry, result: ArchiveResult) -> bool:
    if not entry.body_path.exists():
        result.skipped.append(f"{entry.url}: its body is missing or corrupt")
        return False
    current = store.get(entry.key)
    if current is not None and current.response_time >= entry.response_time:
        return True  # what the cache holds is as recent
    store.write_entry(entry)
    if store.get(entry.key) is None:  # wrong size or malformed: the store removed it
        result.skipped.append(f"{entry.url}: metadata that does not fit its body")
        return False
    return True
