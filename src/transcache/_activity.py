"""What the status page shows about recent traffic, kept in memory by one proxy process:
hit ratios overall, per ecosystem and per host, the upstream time hits saved, the latest
misses and errors, and the hosts tunnelled blind. Fed by the access log (`Activity` is a
`Recorder`); `EcosystemCounts` is the recorder that keeps the per-ecosystem counters of
`cache stats` in the store. The workers of one proxy exchange their activity as JSON
(`to_json`, `from_json`) and the page shows them `merged`."""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._access import UNCOUNTED_METHOD, Exchange
from ._registries import Ecosystem
from ._stats import HIT_OUTCOMES, MISS_OUTCOMES
from .cache.decide import Outcome
from .store import Store
from .store.counters import EcosystemCounter

K = TypeVar("K")

# How many recent misses and errors the page lists; how many hosts it tallies at most (a
# client sweeping many hosts must not grow memory without bound).
RECENT = 20
MAX_HOSTS = 500
OTHER_HOSTS = "(other hosts)"


@dataclass
class Tally:
    requests: int = 0
    hits: int = 0
    bytes: int = 0
    bytes_from_cache: int = 0
    saved_seconds: float = 0.0

    def add(self, exchange: Exchange, hit: bool) -> None:
        self.requests += 1
        self.bytes += exchange.served_bytes
        if hit:
            self.hits += 1
            self.bytes_from_cache += exchange.served_bytes
            self.saved_seconds += exchange.saved_seconds

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.hits += other.hits
        self.bytes += other.bytes
        self.bytes_from_cache += other.bytes_from_cache
        self.saved_seconds += other.saved_seconds

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_ratio(self) -> float:
        return self.bytes_from_cache / self.bytes if self.bytes else 0.0


@dataclass(frozen=True)
class Recent:
    when: float  # epoch seconds
    url: str
    status: int
    detail: str  # the outcome of a miss, the reason of an error


@dataclass
class Activity:
    started: float = field(default_factory=time.time)
    total: Tally = field(default_factory=Tally)
    by_ecosystem: dict[Ecosystem, Tally] = field(default_factory=dict)
    by_host: dict[str, Tally] = field(default_factory=dict)
    by_user: dict[str, Tally] = field(default_factory=dict)  # authenticated users (team)
    misses: deque[Recent] = field(default_factory=lambda: deque(maxlen=RECENT))
    errors: deque[Recent] = field(default_factory=lambda: deque(maxlen=RECENT))
    passthrough: dict[str, int] = field(default_factory=dict)  # host:port -> tunnels

    def record(self, exchange: Exchange, seconds: float) -> None:
        if exchange.method == UNCOUNTED_METHOD:
            if exchange.status == 200 and exchange.bytes:  # a blind tunnel that ran
                self.passthrough[exchange.url] = self.passthrough.get(exchange.url, 0) + 1
            return
        if not exchange.counted:
            return
        outcome = exchange.outcome
        hit = outcome in HIT_OUTCOMES
        self.total.add(exchange, hit)
        _tally(self.by_ecosystem, exchange.ecosystem or Ecosystem.OTHER).add(exchange, hit)
        self._host_tally(exchange.url).add(exchange, hit)
        if exchange.user is not None:  # users come from the auth file: a bounded set
            _tally(self.by_user, exchange.user).add(exchange, hit)
        if outcome in MISS_OUTCOMES:
            self.misses.appendleft(
                Recent(time.time(), exchange.url, exchange.status, outcome.value)
            )
        elif outcome is Outcome.ERROR and exchange.status >= 500:
            reason = exchange.error or ""
            self.errors.appendleft(Recent(time.time(), exchange.url, exchange.status, reason))

    def _host_tally(self, url: str) -> Tally:
        return self._bounded_host(_host_of(url))

    def _bounded_host(self, host: str) -> Tally:
        if host not in self.by_host and len(self.by_host) >= MAX_HOSTS:
            host = OTHER_HOSTS
        return self.by_host.setdefault(host, Tally())

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "total": dataclasses.asdict(self.total),
            "by_ecosystem": {e.value: dataclasses.asdict(t) for e, t in self.by_ecosystem.items()},
            "by_host": {h: dataclasses.asdict(t) for h, t in self.by_host.items()},
            "by_user": {u: dataclasses.asdict(t) for u, t in self.by_user.items()},
            "misses": [dataclasses.astuple(recent) for recent in self.misses],
            "errors": [dataclasses.astuple(recent) for recent in self.errors],
            "passthrough": self.passthrough,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Activity:
        """What `to_json` wrote (by this version: the workers of one run share it)."""
        return cls(
            started=data["started"],
            total=Tally(**data["total"]),
            by_ecosystem={Ecosystem(e): Tally(**t) for e, t in data["by_ecosystem"].items()},
            by_host={h: Tally(**t) for h, t in data["by_host"].items()},
            by_user={u: Tally(**t) for u, t in data["by_user"].items()},
            misses=deque((Recent(*r) for r in data["misses"]), maxlen=RECENT),
            errors=deque((Recent(*r) for r in data["errors"]), maxlen=RECENT),
            passthrough=dict(data["passthrough"]),
        )


def merged(activities: Iterable[Activity]) -> Activity:
    """The activity of several processes as one: tallies added up, the latest misses and
    errors of all, up since the earliest start."""
    activities = list(activities)
    total = Activity(started=min((a.started for a in activities), default=time.time()))
    for activity in activities:
        total.total.merge(activity.total)
        for ecosystem, tally in activity.by_ecosystem.items():
            _tally(total.by_ecosystem, ecosystem).merge(tally)
        for host, tally in activity.by_host.items():
            total._bounded_host(host).merge(tally)
        for user, tally in activity.by_user.items():
            _tally(total.by_user, user).merge(tally)
        for host_port, count in activity.passthrough.items():
            total.passthrough[host_port] = total.passthrough.get(host_port, 0) + count
    for name in ("misses", "errors"):
        latest = heapq.nlargest(
            RECENT, (r for a in activities for r in getattr(a, name)), key=lambda r: r.when
        )
        getattr(total, name).extend(latest)
    return total


def _tally(tallies: dict[K, Tally], name: K) -> Tally:
    tally = tallies.get(name)
    if tally is None:
        tally = tallies[name] = Tally()
    return tally


def _host_of(url: str) -> str:
    """The host of an absolute URL (what urlsplit(url).hostname gives, for the URLs the
    proxy logs: scheme://host[:port]/path), done per request without parsing it all."""
    authority = url.partition("://")[2].partition("/")[0]
    if authority.startswith("["):
        return authority[1:].partition("]")[0] or "-"
    return authority.partition(":")[0].lower() or "-"


class EcosystemCounts:
    """Hits, misses and bytes per ecosystem, into the store's counters (`cache stats`)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, exchange: Exchange, seconds: float) -> None:
        if not exchange.counted or exchange.ecosystem is None:
            return
        ecosystem = exchange.ecosystem.value
        if exchange.outcome in HIT_OUTCOMES:
            self.store.counters.count_ecosystem(ecosystem, EcosystemCounter.HITS)
            self.store.counters.count_ecosystem(
                ecosystem, EcosystemCounter.BYTES_FROM_CACHE, exchange.bytes
            )
        elif exchange.outcome in MISS_OUTCOMES:
            self.store.counters.count_ecosystem(ecosystem, EcosystemCounter.MISSES)
            self.store.counters.count_ecosystem(
                ecosystem, EcosystemCounter.BYTES_FROM_UPSTREAM, exchange.served_bytes
            )
