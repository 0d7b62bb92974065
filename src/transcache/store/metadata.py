"""Typed metadata records, validated where they are read.

A metadata file holds one of two records: an `Entry` (a stored response: its head and which
blob is its body) under the key `primary + "\\n" + variant`, or a `VaryIndex` under a primary
key (which request headers choose the variant). `parse_record` is the one place a record read
from disk or from an archive is checked: a cache dir can be restored from a tampered archive
or hit by bit rot, so every field's type is checked, a digest is exactly 64 lowercase hex
digits (never a path), and text must be latin-1 (header bytes are stored that way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .._protocol import Headers
from .._registries import Ecosystem, shape_of
from .layout import shard_path, valid_digest

T = TypeVar("T")


class EntryKind(StrEnum):
    HTTP = "http"
    GIT = "git"


class MetadataError(ValueError):
    """A metadata record that cannot be used; its message says why."""


def now() -> float:
    """The clock entry times are taken from."""
    return time.time()


@dataclass
class Entry:
    """A stored response: its head and where its body is."""

    key: str
    url: str
    status: int
    reason: bytes
    headers: Headers
    digest: str
    size: int
    request_time: float
    response_time: float
    body_path: Path
    kind: EntryKind = EntryKind.HTTP
    ecosystem: Ecosystem = Ecosystem.OTHER
    # How long the first download took (request sent to body stored): what each hit saves.
    fetch_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.kind = EntryKind(self.kind)  # callers may pass the kind's text
        self.ecosystem = Ecosystem(self.ecosystem)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "url": self.url,
            "status": self.status,
            "reason": self.reason.decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
            "digest": self.digest,
            "size": self.size,
            "request_time": self.request_time,
            "response_time": self.response_time,
            "kind": str(self.kind),
            "ecosystem": self.ecosystem.value,
            "fetch_seconds": self.fetch_seconds,
        }


@dataclass(frozen=True)
class VaryIndex:
    """Which request header fields choose among a primary key's stored variants."""

    key: str
    fields: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "vary": list(self.fields)}


def parse_record(data: object, blobs: Path) -> Entry | VaryIndex:
    """The record `data` (parsed JSON) holds; an entry's body path is under `blobs`.
    Raises MetadataError, saying what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("key"), str):
        raise MetadataError("no key")
    if "digest" not in data:
        vary = data.get("vary")
        if not isinstance(vary, list) or not all(isinstance(f, str) for f in vary):
            raise MetadataError("an index record without a list of Vary fields")
        return VaryIndex(data["key"], tuple(vary))
    digest = data["digest"]
    if not valid_digest(digest):
        raise MetadataError(f"a digest that is not a sha256: {digest!r}")
    kind = _kind(data.get("kind", EntryKind.HTTP))
    url = _field(data, "url", str)
    return Entry(
        key=data["key"],
        url=url,
        status=_count(data, "status"),
        reason=_latin1(_field(data, "reason", str), "reason"),
        headers=_headers(data.get("headers")),
        digest=digest,
        size=_count(data, "size"),
        request_time=_time(data, "request_time"),
        response_time=_time(data, "response_time"),
        body_path=shard_path(blobs, digest),
        kind=kind,
        ecosystem=_ecosystem(data.get("ecosystem"), kind, url),
        fetch_seconds=_time(data, "fetch_seconds") if "fetch_seconds" in data else 0.0,
    )


def _field(data: dict[str, Any], name: str, kind: type[T]) -> T:
    value = data.get(name)
    if not isinstance(value, kind):
        raise MetadataError(f"a bad {name}: {value!r}")
    return value


def _count(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MetadataError(f"a bad {name}: {value!r}")
    return value


def _time(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MetadataError(f"a bad {name}: {value!r}")
    return float(value)


def _latin1(text: str, name: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise MetadataError(f"a {name} that is not latin-1") from exc


def _headers(raw: object) -> Headers:
    if not isinstance(raw, list):
        raise MetadataError(f"bad headers: {raw!r}")
    headers = []
    for pair in raw:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise MetadataError(f"a bad header: {pair!r}")
        headers.append((_latin1(pair[0], "header"), _latin1(pair[1], "header")))
    return headers


def _kind(value: object) -> EntryKind:
    for kind in EntryKind:
        if value == kind:
            return kind
    raise MetadataError(f"an unknown kind: {value!r}")


def _ecosystem(value: object, kind: EntryKind, url: str) -> Ecosystem:
    """The recorded ecosystem; for a record from before it was recorded, what the entry's
    kind and URL say (without the request's Accept header, which only npm packuments need)."""
    if value is None:
        if kind is EntryKind.GIT:
            return Ecosystem.GIT
        parts = urlsplit(url)
        return shape_of(parts.path + ("?" + parts.query if parts.query else "")).ecosystem
    for ecosystem in Ecosystem:
        if value == ecosystem.value:
            return ecosystem
    raise MetadataError(f"an unknown ecosystem: {value!r}")
