"""One upstream download shared by everyone who asks for it, as an explicit state machine.

A flight is registered under its key before its request goes out, so askers that arrive
before the response head wait for that head instead of sending requests of their own:

    PENDING --head, storable--> STORING --all bytes--> COMPLETE --renamed--> PUBLISHED
       |                          |   \\                   \\
       | not storable             |    disk failed          publish failed
       v                          |     v                    v
    ABANDONED                     |   SPILLED --all bytes--> DELIVERED
    (waiters go upstream)         v      |
                                FAILED <-+  (the origin broke off, or the download was
                                             cancelled: readers get an error)

While STORING, every reader (the first asker included) reads the growing temp file from its
own offset and waits for more; when the disk fails (SPILLED) the bytes that never reached the
file are handed to each reader from memory instead, so clients still get whole responses and
nothing is published. A reader ends when the body has arrived (COMPLETE), not when it is
published: publishing is the fsync and renames. Terminal states: ABANDONED, PUBLISHED,
DELIVERED, FAILED; `done` is set on reaching one.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from .._channel import READ_SIZE
from .._errors import ProxyError, TranscacheError, UpstreamError
from .._protocol import Headers
from ..store import BodyWriter
from .sources import UpstreamAnswer

log = logging.getLogger("transcache.cache")

# Chunks a reader may fall behind a flight that lost its disk, before the flight waits for it.
LIVE_BUFFER_CHUNKS = 16


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
# States in which every body byte a reader will get is in the temp file, or has been fed.
BODY_ENDED = frozenset({State.COMPLETE, State.PUBLISHED, State.DELIVERED})

# Publishes a complete body (the fsync and renames); OSError when it cannot.
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
        self.path = ""
        self.url = ""  # for the status page's downloads in flight
        self.written = 0
        self.error: str | None = None
        self.readers: set[FlightReader] = set()
        self._changed = trio.Event()

    def move(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise FlightError(f"flight {self.key!r}: {self.state.name} -> {state.name}")
        self.state = state
        if state in (State.STORING, State.ABANDONED):
            self.head_ready.set()
        if state in (State.FAILED, State.DELIVERED):
            for reader in list(self.readers):
                reader.end_feed()  # no more live chunks
        if state in TERMINAL:
            self.done.set()
        self.notify()

    @property
    def joinable(self) -> bool:
        return self.state is State.STORING

    def notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait(self) -> None:
        await self._changed.wait()

    async def run(self, response: UpstreamAnswer, writer: BodyWriter, publish: Publish) -> int:
        """Stream the body into `writer` (STORING), then publish it; returns the bytes that
        came from upstream. Errors from upstream end the flight FAILED, never raise."""
        live: BodyWriter | None = writer
        received = 0
        try:
            while chunk := await response.read():
                received += len(chunk)
                if live is not None:
                    before = live.written
                    try:
                        live.write(chunk)
                    except OSError as exc:
                        # Readers get what reached the file from it, the rest from memory.
                        log.warning("cannot store %s (%s): passing it through", self.key, exc)
                        chunk = chunk[live.written - before :]
                        self.written = live.written
                        live.abort()
                        live = None
                        self.move(State.SPILLED)
                    else:
                        self.written = live.written
                        self.notify()
                        continue
                for reader in list(self.readers):
                    await reader.feed(chunk)
            if live is None:
                self.move(State.DELIVERED)
                return received
            self.move(State.COMPLETE)
            try:
                await publish(live)
            except OSError as exc:
                log.warning("cannot publish %s: %s", self.key, exc)
                live.abort()
                self.move(State.DELIVERED)
            else:
                self.move(State.PUBLISHED)
            live = None
        except ProxyError as error:
            log.warning("%s: download failed, nothing stored: %s", self.key, error)
            self.error = str(error)
            self.move(State.FAILED)
        finally:
            if live is not None:
                live.abort()
            if self.state not in TERMINAL:  # cancelled: readers must not wait forever
                self.error = "the download was cancelled"
                self.move(State.FAILED)
            await response.aclose()
        return received


class FlightReader:
    """One client's view of a flight: the temp file from offset 0, then live chunks if the
    flight lost its disk."""

    def __init__(self, flight: Flight, headers: Headers, head_only: bool) -> None:
        self.status = flight.status
        self.reason = flight.reason
        self.headers = headers
        self._flight = flight
        self._position = 0
        self._head_only = head_only
        self._fd = os.open(flight.path, os.O_RDONLY)
        self._live_send, self._live = trio.open_memory_channel[bytes](LIVE_BUFFER_CHUNKS)
        flight.readers.add(self)

    async def read(self) -> bytes:
        flight = self._flight
        if self._head_only:
            return b""
        while True:
            if self._position < flight.written:
                size = min(READ_SIZE, flight.written - self._position)
                data = os.pread(self._fd, size, self._position)
                self._position += len(data)
                return data
            if flight.state in (State.SPILLED, State.DELIVERED, State.FAILED):
                with contextlib.suppress(trio.EndOfChannel):
                    return await self._live.receive()
            if flight.state is State.FAILED:
                raise UpstreamError(flight.error or "the download failed")
            if flight.state in BODY_ENDED:
                return b""
            await flight.wait()

    async def feed(self, chunk: bytes) -> None:
        """Hand over a chunk that never reached the disk (the flight lost it)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._live_send.send(chunk)

    def end_feed(self) -> None:
        self._live_send.close()

    async def aclose(self) -> None:
        self._flight.readers.discard(self)
        self._live.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
