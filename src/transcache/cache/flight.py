"""One upstream download shared by everyone who asks for it, as an explicit state machine.

A flight is registered under its key before its request goes out, so askers that arrive
before the response head wait for that head instead of sending requests of their own:

    PENDING --head, storable--> STORING --all bytes--> COMPLETE --published--> PUBLISHED
       |                          |   \\                   \\
       | not storable             |    disk failed          disk or publish failed
       v                          |     v                    v
    ABANDONED                     |   SPILLED --all bytes--> DELIVERED
    (waiters go upstream)         v      |
                                FAILED <-+  (the origin broke off, or the download was
                                             cancelled: readers get an error)

How the bytes move. The download task appends what the origin sends to an in-memory window
and wakes the readers. A disk task hands the window's unwritten bytes, once there are
BATCH_BYTES of them, to a worker thread that appends them to the temp file and hashes them;
then `written` moves on, and written bytes leave the window when it needs the room. Every
reader (the first asker and each joiner alike) reads from its own offset: from the window
while its bytes are there (a client keeping pace gets the bytes just received, never re-read
from disk), from the temp file below it (a joiner catching up, a client slower than the
origin). Only bytes already written are read from the file.

Memory stays flat: the window holds at most WINDOW_BYTES (plus one piece), and the download
waits while it is full of unwritten bytes. While the disk works, written bytes make room
whatever the readers' pace, so a slow client never holds the download back; once the disk
has failed (SPILLED), bytes leave the window only when every reader has them, so the slowest
reader paces the origin and clients still get whole responses (nothing is published).

A reader ends when the body has arrived (COMPLETE), not when it is written or published:
publishing (the last batch, the fsync and renames, the metadata) runs in the store's writer
thread. Terminal states: ABANDONED, PUBLISHED, DELIVERED, FAILED; `done` is set on reaching
one.
"""

from __future__ import annotations

import collections
import enum
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from .._errors import ProxyError, TranscacheError, UpstreamError
from .._protocol import Headers
from ..store import BodyWriter
from .sources import UpstreamAnswer

log = logging.getLogger("transcache.cache")

# Unwritten bytes handed to the disk at once: few thread hops, and the hash runs in the
# worker (hashlib releases the GIL for large updates).
BATCH_BYTES = 1024 * 1024
# Body bytes a flight keeps in memory at most; the download waits while the window is full.
WINDOW_BYTES = 4 * BATCH_BYTES
# Bytes a reader behind the window reads from the temp file at once.
FILE_READ_BYTES = 1024 * 1024


class State(enum.Enum):
    PENDING = enum.auto()
    ABANDONED = enum.auto()
    STORING = enum.auto()
    SPILLED = enum.auto()
    COMPLETE = enum.auto()
    PUBLISHED = enum.auto()
    DELIVERED = enum.auto()
    FAILED = enum.auto()


TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.ABANDONED, State.STORING}),
    State.STORING: frozenset({State.SPILLED, State.COMPLETE, State.FAILED}),
    State.SPILLED: frozenset({State.DELIVERED, State.FAILED}),
    State.COMPLETE: frozenset({State.PUBLISHED, State.DELIVERED, State.FAILED}),
    State.ABANDONED: frozenset(),
    State.PUBLISHED: frozenset(),
    State.DELIVERED: frozenset(),
    State.FAILED: frozenset(),
}
TERMINAL = frozenset(state for state, nexts in TRANSITIONS.items() if not nexts)
# States in which every body byte has arrived from the origin.
BODY_ENDED = frozenset({State.COMPLETE, State.PUBLISHED, State.DELIVERED})

# States in which bytes in memory may still go to the disk.
STILL_WRITING = frozenset({State.PENDING, State.STORING, State.COMPLETE})

# Publishes a complete body (its staged last bytes, the fsync and renames); OSError when it
# cannot.
Publish = Callable[[BodyWriter], Awaitable[None]]


class FlightError(TranscacheError):
    """A transition the state machine does not have: a bug, never a client's doing."""


class Flight:
    def __init__(self, key: str) -> None:
        self.key = key
        self.state = State.PENDING
        # Set once the head is in (STORING) or the flight is abandoned.
        self.head_ready = trio.Event()
        self.done = trio.Event()
        self.variant = ""
        self.status = 0
        self.reason = b""
        self.headers: Headers = []  # as stored: no Content-Length
        self.content_length: bytes | None = None
        self.url = ""  # for the status page's downloads in flight
        self.received = 0  # body bytes from the origin
        self.written = 0  # of those, in the temp file (readable through `share_file`)
        self.error: str | None = None
        self.readers: set[FlightReader] = set()
        # (offset, bytes): the newest pieces of the body, the unwritten ones among them
        # (see the module comment and `_trim`); `_window_bytes` is their total size.
        self._window: collections.deque[tuple[int, bytes]] = collections.deque()
        self._window_bytes = 0
        self._file = -1  # the flight's descriptor of the temp file, once it has bytes
        self._changed = trio.Event()

    def move(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise FlightError(f"flight {self.key!r}: {self.state.name} -> {state.name}")
        self.state = state
        if state in (State.STORING, State.ABANDONED):
            self.head_ready.set()
        if state is State.FAILED:
            self._drop_window(self.received)
        if state in TERMINAL:
            self.done.set()
        self._trim()
        self.notify()

    @property
    def joinable(self) -> bool:
        return self.state is State.STORING

    def notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait(self) -> None:
        await self._changed.wait()

    # -- the body in memory --------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Body bytes held in memory (at most WINDOW_BYTES plus one piece)."""
        return self._window_bytes

    def window_from(self, offset: int) -> bytes | None:
        """The received bytes from `offset` on, up to the end of one piece; None when they
        have left the window (they are in the temp file)."""
        if not self._window or offset < self._window[0][0]:
            return None
        for start, piece in reversed(self._window):  # a reader keeping pace wants the last
            if start <= offset:
                return piece if offset == start else piece[offset - start :]
        return None

    def share_file(self) -> int:
        """A descriptor of the temp file for a reader (theirs to close), -1 while it has no
        bytes yet."""
        return os.dup(self._file) if self._file >= 0 else -1

    def reader_moved(self) -> None:
        """A reader advanced or left: that may free window space."""
        if self._trim():
            self.notify()

    def _trim(self) -> bool:
        """Drop from the window what no one can need any more; True when something went.
        Bytes the file holds can go once readers can open it, when the window needs the room
        (a client a little behind still reads from memory). Unwritten bytes stay while they
        may still be written (STORING, COMPLETE), and so does everything joiners may still
        read (STORING); after that, bytes every reader has passed go too."""
        keep_from = self.written if self._file >= 0 else 0
        if self.state not in STILL_WRITING:
            slowest = min((reader.position for reader in self.readers), default=self.received)
            keep_from = max(keep_from, slowest)
        return self._drop_window(keep_from, 0 if self.state in TERMINAL else WINDOW_BYTES)

    def _drop_window(self, keep_from: int, recent: int = 0) -> bool:
        """Drop the pieces that end by `keep_from`, oldest first, while the window holds
        more than `recent` bytes."""
        dropped = False
        window = self._window
        while (
            window and self._window_bytes > recent and window[0][0] + len(window[0][1]) <= keep_from
        ):
            self._window_bytes -= len(window.popleft()[1])
            dropped = True
        return dropped

    def _unwritten(self) -> list[bytes]:
        """The received pieces not yet in the file (writes end on piece boundaries)."""
        return [piece for start, piece in self._window if start >= self.written]

    # -- the download --------------------------------------------------------------------------

    async def run(self, response: UpstreamAnswer, writer: BodyWriter, publish: Publish) -> int:
        """Receive the body into the window while a disk task writes it (STORING), then
        publish it; returns the bytes that came from upstream. Errors from upstream end the
        flight FAILED, never raise."""
        live: list[BodyWriter] = [writer]  # emptied when the disk fails
        try:
            failure: ProxyError | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._store_batches, live)
                try:
                    await self._receive(response)
                except ProxyError as error:
                    failure = error
                    nursery.cancel_scope.cancel()
            if failure is not None:
                log.warning("%s: download failed, nothing stored: %s", self.key, failure)
                self.error = str(failure)
                self.move(State.FAILED)
            elif live:
                await self._publish(live[0], publish)
                live.clear()
        finally:
            for unfinished in live:
                unfinished.abort()
            if self.state not in TERMINAL:  # cancelled: readers must not wait forever
                self.error = "the download was cancelled"
                self.move(State.FAILED)
            if self._file >= 0:
                os.close(self._file)
                self._file = -1
            await response.aclose()
        return self.received

    async def _receive(self, response: UpstreamAnswer) -> None:
        while chunk := await response.read():
            self._window.append((self.received, chunk))
            self._window_bytes += len(chunk)
            self.received += len(chunk)
            self._trim()
            self.notify()
            while self._window_bytes > WINDOW_BYTES:
                await self.wait()  # for the disk, or (SPILLED) for the slowest reader
        self.move(State.COMPLETE if self.state is State.STORING else State.DELIVERED)

    async def _store_batches(self, live: list[BodyWriter]) -> None:
        """Write the window in batches while the body streams in; the last batch is left to
        the publish, which writes it in the same worker call as the fsync."""
        while live and self.state is State.STORING:
            if self.received - self.written < BATCH_BYTES:
                await self.wait()
                continue
            writer = live[0]
            try:
                await trio.to_thread.run_sync(writer.write_all, self._unwritten())
            except OSError as exc:
                # Readers get what reached the file from it, the rest from memory.
                log.warning("cannot store %s (%s): passing it through", self.key, exc)
                live.clear()
                writer.abort()
                self.move(State.SPILLED)
                return
            if self._file < 0:
                self._file = writer.duplicate_fd()
                for reader in self.readers:
                    reader.got_file(self._file)
            self.written = writer.written
            self._trim()
            self.notify()

    async def _publish(self, writer: BodyWriter, publish: Publish) -> None:
        writer.stage(self._unwritten())
        try:
            # The whole body is here: a shutdown waits for these milliseconds rather than
            # throwing the download away.
            with trio.CancelScope(shield=True):
                await publish(writer)
        except OSError as exc:
            log.warning("cannot publish %s: %s", self.key, exc)
            writer.abort()
            self.move(State.DELIVERED)
        else:
            self.written = self.received  # all in the published file now
            self.move(State.PUBLISHED)


class FlightReader:
    """One client's view of a flight, from offset 0: the temp file below the window, the
    window above it."""

    def __init__(self, flight: Flight, headers: Headers, head_only: bool) -> None:
        self.status = flight.status
        self.reason = flight.reason
        self.headers = headers
        self.position = 0
        self._flight = flight
        self._head_only = head_only
        self._fd = flight.share_file()
        if not head_only:  # reads nothing: must not hold the window back
            flight.readers.add(self)

    def got_file(self, fd: int) -> None:
        """The flight's temp file got its first bytes: keep a descriptor of our own."""
        if self._fd < 0:
            self._fd = os.dup(fd)

    async def read(self) -> bytes:
        flight = self._flight
        if self._head_only:
            return b""
        while True:
            if flight.state is State.FAILED:
                raise UpstreamError(flight.error or "the download failed")
            if self.position < flight.received:
                data = flight.window_from(self.position)
                if data is None:  # left the window: it is in the file
                    size = min(FILE_READ_BYTES, flight.written - self.position)
                    data = os.pread(self._fd, size, self.position)
                    if not data:
                        raise UpstreamError("the stored part of the body is short")
                self.position += len(data)
                flight.reader_moved()
                return data
            if flight.state in BODY_ENDED:
                return b""
            await flight.wait()

    async def aclose(self) -> None:
        self._flight.readers.discard(self)
        self._flight.reader_moved()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
