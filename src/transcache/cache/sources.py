"""What the server streams to a client: a response head, then body pieces until b"".

Three kinds: a stored body read from disk (`StoredResponse`), a download in flight
(`flight.FlightReader`), and an upstream response passed through (`PassThrough`).
"""

from __future__ import annotations

import os
from typing import Protocol

from .._channel import READ_SIZE
from .._errors import TranscacheError, UpstreamError
from .._protocol import Headers, Origin
from .._upstream import BodyReader
from ..store import Counter, Entry, Store
from .decide import StoredHead


class UpstreamAnswer(Protocol):
    """A response head from an origin, and its body piece by piece (the upstream pool's
    UpstreamResponse; in-process tests give their own)."""

    status: int
    reason: bytes
    headers: Headers

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """Where the cache sends requests: the upstream pool (in-process tests: a fake origin)."""

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodyReader | None,
    ) -> UpstreamAnswer: ...


class ResponseSource(Protocol):
    status: int
    reason: bytes
    headers: Headers

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class EntryGoneError(TranscacheError):
    """A stored body vanished (evicted, deleted) between lookup and reading, or is not what
    its digest says (and was removed): the request is looked up again."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class StoredResponse:
    """An answer from a stored entry: `head` says which bytes of its body (none for HEAD,
    304 and 416). The body is read (small) or opened (large) at once, so an eviction after
    this point cannot take it away; EntryGoneError when it is already gone."""

    def __init__(self, head: StoredHead, entry: Entry, store: Store) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.entry = entry
        self._store = store
        self._fd = -1
        self._position = head.start
        self._remaining = head.length
        self._small: bytes | None = None
        self._served = 0
        if head.length:
            try:
                self._small = store.small_body(entry)
                if self._small is None:
                    self._fd = os.open(entry.body_path, os.O_RDONLY)
            except OSError as exc:
                raise EntryGoneError(entry.key) from exc

    async def read(self) -> bytes:
        if self._remaining <= 0:
            await self.aclose()
            return b""
        if self._small is not None:
            data = self._small[self._position : self._position + self._remaining]
            self._remaining = 0
            self._served += len(data)
            return data
        data = os.pread(self._fd, min(READ_SIZE, self._remaining), self._position)
        if not data:
            await self.aclose()
            raise UpstreamError("stored body ended early")
        self._position += len(data)
        self._remaining -= len(data)
        self._served += len(data)
        return data

    async def aclose(self) -> None:
        if self._served:
            self._store.count(Counter.BYTES_FROM_CACHE, self._served)
            self._served = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PassThrough:
    """An upstream response passed on, with extra headers (Cache-Status); with `head_only`
    (a GET sent upstream for a client's HEAD) its body is left unread, and the connection is
    closed rather than pooled."""

    def __init__(
        self, response: UpstreamAnswer, extra: Headers, *, head_only: bool = False
    ) -> None:
        self._response = response
        self._head_only = head_only
        self.status = response.status
        self.reason = response.reason
        self.headers = [*response.headers, *extra]

    async def read(self) -> bytes:
        if self._head_only:
            return b""
        return await self._response.read()

    async def aclose(self) -> None:
        await self._response.aclose()
