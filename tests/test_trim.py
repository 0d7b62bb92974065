"""Giving memory back after a burst (`_trim.py`): glibc keeps the heap at its high-water
mark, so a proxy that served a burst stays large while idle unless it asks for a trim."""

from __future__ import annotations

import sys

import pytest
import trio
import trio.lowlevel
import trio.testing

from transcache._limits import ConnectionSlots
from transcache._trim import MALLOC_TRIM, QUIET_SECONDS, trim_when_quiet


async def test_a_trim_follows_traffic_once_no_connection_is_open(
    mock_clock: trio.testing.MockClock,
) -> None:
    slots = ConnectionSlots(limit=10)
    trims: list[float] = []

    async def trim() -> None:
        trims.append(trio.current_time())

    async def quiet_for(seconds: float) -> None:
        mock_clock.jump(seconds)
        await trio.testing.wait_all_tasks_blocked()  # the trimmer woke, looked, maybe trimmed

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trim_when_quiet, slots, trim)
        await trio.testing.wait_all_tasks_blocked()
        await quiet_for(QUIET_SECONDS)
        assert trims == []  # nothing served yet: nothing to give back
        assert slots.admit()
        await quiet_for(QUIET_SECONDS)
        assert trims == []  # a connection is open: not quiet
        slots.release()
        await quiet_for(QUIET_SECONDS)
        assert trims == [3 * QUIET_SECONDS]
        await quiet_for(3 * QUIET_SECONDS)
        assert len(trims) == 1  # no traffic since: once is enough
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_glibcs_malloc_trim_is_found_and_runs() -> None:
    assert MALLOC_TRIM is not None
    MALLOC_TRIM()
