"""What the server streams to a client: a response head, then body pieces until b"".

Three kinds: a stored body read from disk (`StoredResponse`), a download in flight
(`flight.FlightReader`), and an upstream response passed through (`PassThrough`).

A stored answer's head is usually the same bytes every time but for its Age and
Cache-Status: `Heads` renders it once per entry, and the server writes those bytes with the
two fields patched in (`StoredResponse.prebuilt`), without building the head again. A stored
body is also exposed as what it is (bytes in memory, or an open file and a span), so the
server can write it in few, large writes (or with sendfile) instead of piece by piece.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Protocol

from .._channel import READ_SIZE
from .._errors import TranscacheError, UpstreamError
from .._protocol import Headers, Origin, response_headers_for_client
from .._upstream import BodyReader
from ..store import Counter, Entry, Store
from .decide import PER_ANSWER, StoredHead

# Rendered heads kept (a few hundred bytes each), least recently used dropped first.
HEADS_KEPT = 10_000


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


class Heads:
    """The heads of whole answers from stored entries, rendered to bytes once per entry: the
    status line and every field the client gets (as `response_headers_for_client` makes
    them) but the `PER_ANSWER` ones. An entry whose headers were replaced (a 304 refreshed
    them, or another process rewrote its metadata and the store read it anew) is rendered
    again: the rendering is kept with the very headers list it was made from."""

    def __init__(self) -> None:
        self._heads: OrderedDict[str, tuple[Headers, str, bytes]] = OrderedDict()

    def fixed(self, entry: Entry, head: StoredHead) -> bytes:
        kept = self._heads.get(entry.key)
        if kept is not None and kept[0] is entry.headers and kept[1] == entry.digest:
            self._heads.move_to_end(entry.key)
            return kept[2]
        fields = response_headers_for_client(
            [(k, v) for k, v in head.headers if k.lower() not in PER_ANSWER]
        )
        rendered = render_head(head.status, head.reason, fields)
        self._heads[entry.key] = (entry.headers, entry.digest, rendered)
        if len(self._heads) > HEADS_KEPT:
            self._heads.popitem(last=False)
        return rendered

    def prebuilt(self, entry: Entry, head: StoredHead) -> bytes:
        """The whole head of this answer but its final empty line (and a Connection field,
        which the server adds when h11 says the connection ends)."""
        per_answer = render_fields([(k, v) for k, v in head.headers if k.lower() in PER_ANSWER])
        return self.fixed(entry, head) + per_answer


def render_head(status: int, reason: bytes, fields: Headers) -> bytes:
    """A response's status line and fields as HTTP/1.1 writes them (no final empty line)."""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason) + render_fields(fields)


def render_fields(fields: Headers) -> bytes:
    return b"".join([b"%s: %s\r\n" % field for field in fields])


class StoredResponse:
    """An answer from a stored entry: `head` says which bytes of its body (none for HEAD,
    304 and 416). The body is read (small: `small`) or opened (large: `fd`) at once, so an
    eviction after this point cannot take it away; EntryGoneError when it is already gone.
    The server streams it with `read`, or writes `small` or the span `start`, `length` of
    `fd` itself and says so with `sent`. `prebuilt` is the head rendered by `heads`, or None
    when it is not a whole answer (or no `heads`: h11 renders `headers`)."""

    def __init__(
        self, head: StoredHead, entry: Entry, store: Store, heads: Heads | None = None
    ) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.entry = entry
        self.prebuilt = heads.prebuilt(entry, head) if heads and head.whole else None
        self._store = store
        self.fd = -1
        self.start = head.start
        self.length = head.length
        self.small: bytes | None = None
        self._served = 0
        if head.length:
            try:
                self.small = store.small_body(entry)
                if self.small is None:
                    self.fd = os.open(entry.body_path, os.O_RDONLY)
            except OSError as exc:
                raise EntryGoneError(entry.key) from exc

    def small_span(self) -> bytes:
        """The bytes to send of a body kept in memory (`small` is not None)."""
        assert self.small is not None
        if self.start == 0 and self.length == len(self.small):
            return self.small
        return self.small[self.start : self.start + self.length]

    def sent(self, size: int) -> None:
        """`size` more bytes of the span went to the client."""
        self.start += size
        self.length -= size
        self._served += size

    async def read(self) -> bytes:
        if self.length <= 0:
            await self.aclose()
            return b""
        if self.small is not None:
            data = self.small_span()
        else:
            data = os.pread(self.fd, min(READ_SIZE, self.length), self.start)
            if not data:
                await self.aclose()
                raise UpstreamError("stored body ended early")
        self.sent(len(data))
        return data

    async def aclose(self) -> None:
        if self._served:
            self._store.count(Counter.BYTES_FROM_CACHE, self._served)
            self._served = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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
