"""`transcache exec -- CMD`: run one command through a proxy. The installed service is used
when it answers /healthz (and no run option asks for something it cannot do); otherwise a
proxy runs in this process, on a free loopback port, for as long as the command does.

The child gets our environment plus the proxy and CA variables. SIGINT, SIGTERM and SIGHUP
sent to us are passed on to it, and its exit status becomes ours, 128+N for death by
signal N as shells report it. The summary line gives the in-process proxy's counters.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Mapping, Sequence

import trio

from .._config import Config
from .._stats import Counters
from ..api import open_proxy

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SIGNAL_EXIT_BASE = 128


# exec --offline exits with this when CMD succeeded but something was not in the cache.
OFFLINE_MISS_STATUS = 1
MISSES_SHOWN = 10


def summary_line(proxy: str, counters: Counters | None) -> str:
    """exec's last words on stderr: what went through the proxy (the service's counters are
    not ours to read, so for it only its address)."""
    if counters is None:
        return f"transcache: through the service at {proxy}"
    line = (
        f"transcache: {counters.requests} requests through {proxy}, {counters.hits} from "
        f"cache, {counters.bytes_from_cache} bytes from cache, "
        f"{counters.upstream_bytes} from upstream"
    )
    if counters.offline_misses:
        shown = ", ".join(counters.offline_misses[:MISSES_SHOWN])
        more = len(counters.offline_misses) - MISSES_SHOWN
        line += f"; {len(counters.offline_misses)} offline misses: {shown}"
        line += f" (+{more} more)" if more > 0 else ""
    return line


def exit_status(returncode: int) -> int:
    return SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


async def run_child(command: Sequence[str], env: Mapping[str, str]) -> int:
    """Run `command`, passing on the signals we receive; its exit status, shell style."""
    with trio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            start = functools.partial(trio.run_process, list(command), env=dict(env), check=False)
            process: trio.Process = await nursery.start(start)

            async def forward() -> None:
                async for signum in signals:
                    process.send_signal(signum)

            nursery.start_soon(forward)
            returncode = await process.wait()
            nursery.cancel_scope.cancel()
    return exit_status(returncode)


async def run_with_service(command: Sequence[str], env: Mapping[str, str]) -> int:
    return await run_child(command, {**os.environ, **env})


async def run_in_process(command: Sequence[str], config: Config) -> tuple[int, str]:
    """Run `command` through a proxy of its own; (exit status, summary line)."""
    async with open_proxy(config) as running:
        status = await run_child(command, {**os.environ, **running.env})
        counters = running.server.stats.total
        if config.offline and counters.offline_misses and status == 0:
            status = OFFLINE_MISS_STATUS  # hermetic run: a miss fails it, even if CMD coped
        return status, summary_line(running.url, counters)
