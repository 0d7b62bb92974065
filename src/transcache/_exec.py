"""`transcache exec -- CMD`: run one command through a proxy, the installed service's or one
running in this process, on a free loopback port, for as long as the command does.

The child gets our environment plus the proxy and CA variables. SIGINT, SIGTERM and SIGHUP
sent to us are passed on to it, and its exit status becomes ours, 128+N for death by
signal N as shells report it. Which proxy to use, and what to print, the CLI decides.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio

from ._config import Config
from ._stats import Counters
from .api import open_proxy

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SIGNAL_EXIT_BASE = 128
# exec --offline exits with this when CMD succeeded but something was not in the cache.
OFFLINE_MISS_STATUS = 1


@dataclass(frozen=True)
class ExecResult:
    """How the command ended (its exit status, shell style), and through which proxy."""

    status: int
    proxy_url: str
    # The in-process proxy's counters; None for the service, whose counters are not ours.
    counters: Counters | None


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


async def run_with_service(
    command: Sequence[str], proxy_url: str, env: Mapping[str, str]
) -> ExecResult:
    """Run `command` through the installed service at `proxy_url`; `env` is its variables."""
    status = await run_child(command, {**os.environ, **env})
    return ExecResult(status, proxy_url, None)


async def run_in_process(command: Sequence[str], config: Config) -> ExecResult:
    """Run `command` through a proxy of its own."""
    async with open_proxy(config) as running:
        status = await run_child(command, {**os.environ, **running.env})
        counters = running.server.stats.total
        if config.offline and counters.offline_misses and status == 0:
            status = OFFLINE_MISS_STATUS  # hermetic run: a miss fails it, even if CMD coped
        return ExecResult(status, running.url, counters)
