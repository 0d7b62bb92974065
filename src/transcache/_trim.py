"""Giving memory back after a burst of traffic.

glibc keeps freed heap memory for reuse, so a proxy's resident size stays at the high-water
mark of its busiest moment: after a 10-minute soak, 450 MB against about 200 MB in use, and
`malloc_trim(0)` gave 137 MB back in 15 ms (docs/performance.md, the soak). An always-on
service should not hold that all day: once QUIET_SECONDS pass with no client connection open,
after traffic since the last trim, the process asks glibc for a trim, in a worker thread.
Without glibc's malloc_trim (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Awaitable, Callable

import trio

from ._limits import ConnectionSlots

QUIET_SECONDS = 30.0


def _malloc_trim() -> Callable[[], object] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return functools.partial(trim, 0)


MALLOC_TRIM = _malloc_trim()


async def _trim_in_a_thread() -> None:
    assert MALLOC_TRIM is not None
    await trio.to_thread.run_sync(MALLOC_TRIM)


async def trim_when_quiet(
    slots: ConnectionSlots,
    trim: Callable[[], Awaitable[object]] | None = _trim_in_a_thread if MALLOC_TRIM else None,
) -> None:
    """Until cancelled: trim after each quiet spell that followed traffic."""
    if trim is None:
        return
    trimmed_after = slots.admitted
    while True:
        await trio.sleep(QUIET_SECONDS)
        if slots.count == 0 and slots.admitted != trimmed_after:
            trimmed_after = slots.admitted
            await trim()
