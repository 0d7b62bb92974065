"""What one proxy process served, in memory: totals, and the same per client tag.

A tag is the user name a client puts in the proxy URL (``http://TAG@127.0.0.1:PORT``), which
clients send as ``Proxy-Authorization: Basic``; inside a CONNECT tunnel the tunnel's tag
holds. The pytest plugin gives each test its own tag, so traffic is attributed to tests;
`transcache exec` prints the totals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .cache.decide import Outcome

if TYPE_CHECKING:
    from ._access import Exchange

# Outcomes answered without asking the origin.
FROM_CACHE = frozenset({Outcome.HIT, Outcome.OFFLINE, Outcome.STALE_WHILE_REVALIDATE})
# Outcomes that asked the origin but took the body from disk (a 304, or a stale copy).
BODY_FROM_CACHE = frozenset({Outcome.REVALIDATED, Outcome.STALE})
# Outcomes answered with a stored body (the hits of `cache stats` and the hit ratio), and
# the misses: a download started, joined, or a request passed through uncached.
HIT_OUTCOMES = FROM_CACHE | BODY_FROM_CACHE
MISS_OUTCOMES = frozenset({Outcome.MISS, Outcome.COLLAPSED, Outcome.BYPASS})


@dataclass
class Counters:
    requests: int = 0
    hits: int = 0
    upstream_requests: int = 0
    upstream_bytes: int = 0
    bytes_from_cache: int = 0
    upstream_seconds: float = 0.0
    offline_misses: list[str] = field(default_factory=list)


@dataclass
class ProxyStats:
    total: Counters = field(default_factory=Counters)
    by_tag: dict[str, Counters] = field(default_factory=dict)

    def record(self, exchange: Exchange, seconds: float) -> None:
        targets = [self.total]
        if exchange.tag:
            targets.append(self.by_tag.setdefault(exchange.tag, Counters()))
        outcome, size = exchange.outcome, exchange.bytes
        for counters in targets:
            counters.requests += 1
            if outcome is Outcome.OFFLINE_MISS:
                counters.offline_misses.append(exchange.url)
            elif outcome in FROM_CACHE:
                counters.hits += 1
                counters.bytes_from_cache += size
            elif exchange.status:
                counters.upstream_requests += 1
                counters.upstream_seconds += seconds
                if outcome in BODY_FROM_CACHE:
                    counters.bytes_from_cache += size
                else:
                    counters.upstream_bytes += size
