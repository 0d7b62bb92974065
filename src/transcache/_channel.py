"""An h11 connection bound to a trio stream: the one read loop that both sides of the proxy
(clients and origins) use, plus the small stream adapters the server needs.

A body from a file (a stored body) is written past h11's framing but counted by it, so h11
still checks the Content-Length and keeps the connection's state: to a plain TCP client with
`os.sendfile` (the kernel copies page cache to socket), otherwise read into a buffer the
caller reuses and written from it (into TLS) with no copy in Python.
"""

from __future__ import annotations

import os
from typing import cast

import h11
import trio

# Bytes asked of the transport per read: large enough that a fast body costs few events.
READ_SIZE = 256 * 1024
# Bytes of a file body per write (the buffer a caller reuses), and per sendfile call.
FILE_CHUNK = 1024 * 1024
SENDFILE_CHUNK = 8 * 1024 * 1024
# What h11 is handed in place of the bytes sendfile moved: it counts them, never reads them.
_COUNTED = memoryview(bytes(SENDFILE_CHUNK))


class FileEndedError(Exception):
    """A file body ended before the span the response declared."""


class Channel:
    """Reads events from, and writes events to, one HTTP/1.1 connection."""

    def __init__(
        self, stream: trio.abc.Stream, conn: h11.Connection, read_size: int = READ_SIZE
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.read_size = read_size
        self._pending: list[bytes] = []

    async def receive_into_buffer(self) -> None:
        """Read once from the transport into h11's buffer (b"" marks end of stream)."""
        data = await self.stream.receive_some(self.read_size)
        # h11 appends to a bytearray, so a bytearray from the transport needs no copy.
        self.conn.receive_data(cast(bytes, data))

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                await self.receive_into_buffer()
                continue
            assert not isinstance(event, type), event  # PAUSED: caller must cycle first
            return event

    async def send(self, event: h11.Event) -> None:
        self.queue(event)
        await self.flush()

    def queue(self, event: h11.Event) -> None:
        """Frame `event` now, send it with the next flush: a response head and its first
        body bytes go out in one write (one TLS record, one segment for small bodies)."""
        data = self.conn.send(event)
        if data:
            self._pending.append(data)

    async def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            await self.stream.send_all(data)

    def count_body(self, data: bytes | memoryview) -> None:
        """Tell h11 that `data` went out as body bytes written here, past its framing (only
        with Content-Length framing, whose writer passes bytes through untouched)."""
        self.conn.send_with_data_passthrough(h11.Data(data=cast(bytes, data)))

    async def send_file_span(
        self, fd: int, offset: int, count: int, buffer: bytearray, head: bytes = b""
    ) -> int:
        """Send `head` (a response head h11 has seen), then up to `count` body bytes of file
        `fd` from `offset`; return how many body bytes went out. `buffer` is the caller's,
        reused from one call to the next (unused for sendfile); the head goes out in the same
        write as the first bytes. FileEndedError when the file is shorter."""
        if isinstance(self.stream, trio.SocketStream):
            if head:
                await self.stream.send_all(head)
            sent = await _sendfile(self.stream.socket, fd, offset, min(count, SENDFILE_CHUNK))
            self.count_body(_COUNTED[:sent])
            return sent
        start = len(head)
        buffer[:start] = head  # the same size: the buffer is not resized
        view = memoryview(buffer)
        got = os.preadv(fd, [view[start : start + min(count, len(buffer) - start)]], offset)
        if not got:
            raise FileEndedError(f"file body ended {count} bytes early")
        self.count_body(view[start : start + got])
        await self.stream.send_all(view[: start + got])
        return got


async def _sendfile(sock: trio.socket.SocketType, fd: int, offset: int, count: int) -> int:
    """os.sendfile on a non-blocking trio socket: waits while the socket is full."""
    while True:
        try:
            sent = os.sendfile(sock.fileno(), fd, offset, count)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"sendfile failed: {exc}") from exc
        if not sent:
            raise FileEndedError(f"file body ended {count} bytes early")
        await trio.lowlevel.checkpoint()  # a client that never blocks still lets others run
        return sent


class PrefixedStream(trio.abc.Stream):
    """A stream that first yields bytes already read from `inner` (h11's trailing data after
    CONNECT), then reads from `inner` itself."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self._inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()


async def splice(a: trio.abc.Stream, b: trio.abc.Stream) -> int:
    """Copy bytes both ways until both directions end; return the bytes moved."""
    moved = 0

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        nonlocal moved
        try:
            while data := await src.receive_some(READ_SIZE):
                await dst.send_all(data)
                moved += len(data)
            if isinstance(dst, trio.abc.HalfCloseableStream):
                await dst.send_eof()
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a, b)
        nursery.start_soon(pump, b, a)
    return moved
