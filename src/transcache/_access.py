"""The access log: the one place where an exchange (a request and what answered it) is
recorded, in the counters behind `stats` and as one line on the `transcache.access` logger.
Handlers fill in an `Exchange` as they learn its parts, and hand it over once it is done."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from ._stats import ProxyStats

access_log = logging.getLogger("transcache.access")

# CONNECT is a tunnel, not a request: logged, but its bytes are counted by the requests
# inside it (or not at all, for a passthrough tunnel).
UNCOUNTED_METHOD = "CONNECT"


@dataclass
class Exchange:
    """What the access log says about one request. `started` is the trio time its head
    arrived; None for a request that never got that far (its time is logged as "-")."""

    peer: str
    method: str
    url: str = "-"
    status: int = 0
    bytes: int = 0
    cache: str = "-"
    tag: str | None = None
    user: str | None = None  # an authenticated user (--auth-file)
    offline_miss: bool = False
    started: float | None = None


class AccessLog:
    def __init__(self, stats: ProxyStats) -> None:
        self.stats = stats

    def record(self, exchange: Exchange) -> None:
        started = exchange.started
        seconds = 0.0 if started is None else trio.current_time() - started
        if exchange.method != UNCOUNTED_METHOD:
            self.stats.record(
                exchange.tag,
                exchange.url,
                exchange.status,
                exchange.bytes,
                seconds,
                exchange.cache,
                exchange.offline_miss,
            )
        elapsed = "-" if started is None else f"{seconds * 1000:.0f}ms"
        access_log.info(
            "%s %s %s %d %d %s %s",
            exchange.peer,
            exchange.method,
            exchange.url,
            exchange.status,
            exchange.bytes,
            elapsed,
            exchange.cache,
        )
