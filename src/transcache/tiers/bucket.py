"""The one small interface a second-level store offers the shared tier: named objects, read
as a stream, written whole (a large one in parts, visible only once complete), listed and
deleted. S3-compatible storage is the first implementation (`s3.S3Bucket`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .._errors import TranscacheError

SCHEME = "s3://"


class TierError(TranscacheError):
    """The shared tier failed (unreachable, refused, an answer that makes no sense): the
    request goes on to the origin; the message says what went wrong."""


@dataclass(frozen=True)
class Location:
    """Where the shared tier lives: `s3://BUCKET/PREFIX`."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")


def parse_location(text: str) -> Location:
    """`s3://BUCKET[/PREFIX]`; raises ValueError naming what is wrong."""
    if not text.startswith(SCHEME):
        raise ValueError(f"a shared cache is s3://BUCKET/PREFIX, not {text!r}")
    bucket, _, prefix = text.removeprefix(SCHEME).partition("/")
    if not bucket:
        raise ValueError(f"{text!r} names no bucket")
    return Location(bucket, prefix.strip("/"))


@dataclass(frozen=True)
class Listed:
    """An object in a listing: its name under the tier's prefix, and when it was written."""

    name: str
    modified: float


class ObjectBody(Protocol):
    """An object being read: its size, then its bytes piece by piece until b""."""

    size: int

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class Bucket(Protocol):
    async def get(self, name: str) -> ObjectBody | None:
        """The object `name` once its head has arrived, None when there is none."""
        ...

    async def exists(self, name: str) -> bool: ...

    async def put(self, name: str, data: bytes) -> None: ...

    async def put_file(self, name: str, path: Path, size: int) -> None:
        """Upload a file; a large one in parts, visible only once all parts are in."""
        ...

    async def list(self, under: str) -> list[Listed]: ...

    async def delete(self, name: str) -> None: ...

    async def aclose(self) -> None: ...


async def read_whole(body: ObjectBody) -> bytes:
    """A small object's bytes (metadata records)."""
    parts = []
    while chunk := await body.read():
        parts.append(chunk)
    return b"".join(parts)
