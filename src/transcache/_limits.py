"""Limits on what clients may hold (pure; the server applies them): how many connections at
once, which of them may be closed to make room, and how slowly a request body may arrive.

A connection that waits for its next request costs a descriptor and nothing else, so when
the cap is reached the one that has waited longest is closed to make room for a newcomer (as
nginx drains idle keep-alive connections): a flood of silent sockets cannot lock out a client
that has something to ask. A newcomer is turned away only when every connection is busy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Descriptors kept back from the connection cap for the process itself (listeners, the
# store's index, trio's wakeup pipe, files opened by worker threads, idle pooled upstream
# connections), and the most one client connection holds at once: its socket, an upstream
# connection, and two cache files (a body being stored while another is served).
FD_RESERVE = 64
FDS_PER_CONNECTION = 4
# Request body pace is judged over windows of this many seconds spent waiting for it.
BODY_RATE_WINDOW = 30.0


def default_max_connections(fd_limit: int) -> int:
    """The connection cap that keeps a process with `fd_limit` descriptors out of EMFILE."""
    return max(1, (fd_limit - FD_RESERVE) // FDS_PER_CONNECTION)


class Closable(Protocol):
    def cancel(self) -> None: ...


@dataclass
class ConnectionSlots:
    """Client connections counted against `limit`. A connection marks itself idle while it
    waits for a request; `admit` closes the longest idle one to make room when it must."""

    limit: int
    count: int = 0
    admitted: int = 0  # ever: whether there was traffic since some moment
    # Insertion-ordered: the first key has waited longest.
    _idle: dict[Closable, None] = field(default_factory=dict, init=False, repr=False)

    def admit(self) -> bool:
        """Count a new connection in, closing an idle one if the cap is reached; False when
        every connection is busy and the newcomer must be turned away."""
        if self.count >= self.limit:
            if not self._idle:
                return False
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            oldest.cancel()  # its connection ends and calls `release`
        self.count += 1
        self.admitted += 1
        return True

    def release(self) -> None:
        self.count -= 1

    def idle(self, waiting: Closable) -> None:
        """`waiting` (cancelled to close the connection) waits for a request from now on."""
        self._idle[waiting] = None

    def busy(self, waiting: Closable) -> None:
        self._idle.pop(waiting, None)


@dataclass
class BodyPace:
    """How a request body arrives, judged on time spent waiting for it, not time spent
    forwarding it (a slow origin is not the client's fault). The body is cut when nothing
    arrives for `stall` seconds, or when `window` seconds of waiting bring fewer than
    `min_rate` bytes per second (min_rate 0: no minimum)."""

    stall: float
    min_rate: float
    window: float = BODY_RATE_WINDOW
    quiet: float = 0.0  # seconds waited since the last byte
    waited: float = 0.0  # seconds waited in this window
    received: int = 0  # bytes received in this window

    def next_wait(self) -> float:
        """The longest wait for the next piece before a rule must be checked."""
        return min(self.stall - self.quiet, self.window - self.waited)

    def record(self, waited: float, size: int) -> str | None:
        """Count a wait of `waited` seconds that brought `size` bytes; say why the body must
        be cut, or None."""
        self.waited += waited
        self.received += size
        self.quiet = 0.0 if size else self.quiet + waited
        if self.quiet >= self.stall:
            return f"request body made no progress for {self.stall:g} s (--body-timeout)"
        if self.waited >= self.window:
            rate = self.received / self.waited
            if rate < self.min_rate:
                return (
                    f"request body arrived at {rate:.0f} bytes/s over {self.window:g} s, under "
                    f"the minimum of {self.min_rate:.0f} bytes/s (--min-body-rate)"
                )
            self.waited = 0.0
            self.received = 0
        return None
