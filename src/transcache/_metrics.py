"""Prometheus metrics of one proxy process, served at /metrics in the text exposition format
by `prometheus_client` (its own registry per proxy, never the library's global one: several
proxies may run in one process, as the tests and the API do).

Two kinds of series:
- events, counted as they end: requests (`AccessLog` hands every exchange to `record`),
  upstream responses and failures (the upstream pool's `UpstreamWatcher`), TLS handshakes;
- state, read when scraped (`Gauges`, from the server: open connections, downloads in
  flight; from the store: the cache's bytes, limit and entries).

The workers of `transcache run --workers N` report as one proxy through prometheus_client's
multiprocess mode: their supervisor sets MULTIPROCESS_VARIABLE (a private dir per run, removed
at exit) before a worker imports prometheus_client, the event series then live in files there
(a worker that died keeps its counts), and the page sums them (`_WorkersCollector`). The
state series stay a collector read by the worker answering the scrape, which adds up the
others' state (`_observe`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ._access import Exchange
from ._errors import UpstreamError
from ._registries import Ecosystem
from ._stats import HIT_OUTCOMES
from .cache.decide import Failure, Outcome, failure_of

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
# prometheus_client's own variable: where the processes of one proxy keep their series.
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Request durations: from a hit on a small file (a millisecond) to a large download.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


@dataclass(frozen=True)
class Gauges:
    """The proxy's state when scraped; `cache_*` are None without a cache."""

    connections_open: int
    downloads_in_flight: int
    cache_bytes: int | None = None
    cache_max_bytes: int | None = None
    cache_entries: int | None = None
    # The shared tier's counts in this process (hits, bytes, uploads, ...); None without one.
    shared: Mapping[str, int] | None = None


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], Gauges]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        gauges = self._read()
        series = [
            ("connections_open", "client connections open", gauges.connections_open),
            ("downloads_in_flight", "downloads being stored", gauges.downloads_in_flight),
            ("cache_bytes", "bytes of stored bodies", gauges.cache_bytes),
            ("cache_max_bytes", "the cache's size limit (--max-size)", gauges.cache_max_bytes),
            ("cache_entries", "stored responses", gauges.cache_entries),
        ]
        for name, documentation, value in series:
            if value is not None:
                yield GaugeMetricFamily(f"transcache_{name}", documentation, value=value)
        for name, value in (gauges.shared or {}).items():
            what = f"shared cache {name.removeprefix('shared_').replace('_', ' ')}"
            yield CounterMetricFamily(f"transcache_{name}", what, value=value)


class _WorkersCollector(Collector):
    """Every worker's event series, from their files in `shared`. prometheus_client's own
    `MultiProcessCollector` fails the scrape on the file of a worker that is creating it (it
    is empty for an instant); such a file has no series yet and is skipped."""

    def __init__(self, shared: Path) -> None:
        self.shared = shared

    def collect(self) -> Iterator[Metric]:
        files = [str(path) for path in self.shared.glob("*.db") if _size(path) > 0]
        return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class Metrics:
    def __init__(self, gauges: Callable[[], Gauges]) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "transcache_requests",
            "requests answered, by cache outcome and ecosystem",
            ["outcome", "ecosystem"],
            registry=registry,
        )
        self.bytes = Counter(
            "transcache_bytes",
            "response body bytes sent to clients, by where they came from",
            ["source"],
            registry=registry,
        )
        self.upstream_requests = Counter(
            "transcache_upstream_requests",
            "responses from origins, by status class (2xx, 3xx, ...)",
            ["status_class"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "transcache_upstream_errors",
            "origin failures, by kind (unreachable, timeout, tls, broken)",
            ["kind"],
            registry=registry,
        )
        self.durations = Histogram(
            "transcache_request_duration_seconds",
            "time from a request's head to the end of its answer, by outcome",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.users = Counter(
            "transcache_user_requests",
            "requests answered, by authenticated user (--auth-file)",
            ["user"],
            registry=registry,
        )
        self.handshakes = Counter(
            "transcache_tls_handshakes",
            "TLS handshakes with clients, by result",
            ["result"],
            registry=registry,
        )
        # What /metrics shows: this registry, or in a worker every worker's series.
        self.page = registry
        shared = os.environ.get(MULTIPROCESS_VARIABLE)
        if shared:
            self.page = CollectorRegistry()
            self.page.register(_WorkersCollector(Path(shared)))
        self.page.register(_StateCollector(gauges))
        # The labelled children of each (outcome, ecosystem), looked up once: `labels()`
        # validates and locks on every call, which every request would pay.
        self._children: dict[tuple[Outcome, Ecosystem], tuple[Any, Any, Any]] = {}

    def record(self, exchange: Exchange, seconds: float) -> None:
        """Count a finished request (a `Recorder` of the access log)."""
        if not exchange.counted:
            return
        outcome = exchange.outcome or Outcome.UNCACHED
        ecosystem = exchange.ecosystem or Ecosystem.OTHER
        children = self._children.get((outcome, ecosystem))
        if children is None:
            children = self._children[(outcome, ecosystem)] = (
                self.requests.labels(outcome.value, ecosystem.value),
                self.durations.labels(outcome.value),
                self.bytes.labels(byte_source(outcome)),
            )
        requests, durations, sent = children
        requests.inc()
        durations.observe(seconds)
        if exchange.user is not None:
            self.users.labels(exchange.user).inc()
        if exchange.served_bytes:
            sent.inc(exchange.served_bytes)

    def answered(self, status: int) -> None:
        """An origin's response head arrived (the upstream pool's watcher)."""
        self.upstream_requests.labels(f"{status // 100}xx").inc()

    def failed(self, error: UpstreamError) -> None:
        """An origin failed: could not be reached, timed out, failed TLS, or broke off."""
        self.upstream_errors.labels(error_kind(failure_of(error))).inc()

    def handshake(self, ok: bool) -> None:
        self.handshakes.labels("ok" if ok else "failed").inc()

    def render(self) -> tuple[int, bytes, bytes]:
        """The /metrics page."""
        return 200, CONTENT_TYPE, generate_latest(self.page)


def byte_source(outcome: Outcome) -> str:
    """Where the body of an answer with `outcome` came from: "cache" or "upstream"."""
    return "cache" if outcome in HIT_OUTCOMES else "upstream"


def error_kind(failure: Failure) -> str:
    return failure.name.lower()
