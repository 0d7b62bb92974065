"""Progress of a long cache command (export, import, prune, verify) on stderr, so stdout keeps
only the result. On a terminal: one bar, redrawn in place and erased at the end. Anywhere
else (a CI log, a pipe, a file): a plain line at each tenth of the way, so a log shows the
command moving without a line per item and without control characters."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from ._human import plural, size

# How far a command is, in its unit: (done, total) -> "1.2 MiB of 4 MiB".
Amount = Callable[[int, int], str]

BAR_WIDTH = 30
# A terminal is redrawn at most this often (seconds): drawing per item would cost more than
# hashing small bodies.
REDRAW_INTERVAL = 0.1
# A plain line each time another tenth is done.
LINE_STEPS = 10
# Carriage return, then erase to the end of the line (ANSI EL).
ERASE_LINE = "\r\x1b[K"


def of_bytes(done: int, total: int) -> str:
    return f"{size(done)} of {size(total)}"


def of_entries(done: int, total: int) -> str:
    return f"{done} of {plural(total, 'entry', 'entries')}"


def percent(done: int, total: int) -> int:
    return 100 if total <= 0 else min(100, done * 100 // total)


def bar_line(what: str, done: int, total: int, amount: Amount = of_bytes) -> str:
    """ "verify [#########.....................]  30% 1.2 MiB of 4 MiB"."""
    filled = BAR_WIDTH * percent(done, total) // 100
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return f"{what} [{bar}] {percent(done, total):>3}% {amount(done, total)}"


def plain_line(what: str, done: int, total: int, amount: Amount = of_bytes) -> str:
    """ "verify: 30% (1.2 MiB of 4 MiB)"."""
    return f"{what}: {percent(done, total)}% ({amount(done, total)})"


class Progress:
    """A `store.maintenance.Progress` callback drawing on `stream` (see the module comment),
    counting in the unit `amount` names."""

    def __init__(
        self,
        what: str,
        stream: TextIO,
        amount: Amount = of_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.stream = stream
        self.amount = amount
        self.terminal = stream.isatty()
        self.clock = clock
        self.drawn_at: float | None = None
        self.step = -1

    def __call__(self, done: int, total: int) -> None:
        if self.terminal:
            now = self.clock()
            recent = self.drawn_at is not None and now - self.drawn_at < REDRAW_INTERVAL
            if recent and done < total:
                return
            self.drawn_at = now
            self.stream.write("\r" + bar_line(self.what, done, total, self.amount))
        else:
            step = percent(done, total) * LINE_STEPS // 100
            if step <= self.step:
                return
            self.step = step
            self.stream.write(plain_line(self.what, done, total, self.amount) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar, so what the command prints next starts on a clean line."""
        if self.terminal and self.drawn_at is not None:
            self.stream.write(ERASE_LINE)
            self.stream.flush()


@contextmanager
def progress(what: str, amount: Amount = of_bytes) -> Iterator[Progress]:
    """A Progress on stderr, closed when the block ends."""
    shown = Progress(what, sys.stderr, amount)
    try:
        yield shown
    finally:
        shown.close()
