"""What a proxy tells about itself: the Prometheus metrics (/metrics), the status page (/),
and the live counters of `transcache status` and `cache stats` (/stats.json). One
`Observer` per proxy gathers them: it hands the access log its recorders and the upstream
pool its watcher, reads the state gauges from the server and the store, and registers the
three pages with the admin registry."""

from __future__ import annotations

import importlib.metadata
import json

import trio

from ._access import Recorder
from ._activity import Activity, EcosystemCounts
from ._admin import APPLICATION_JSON, AdminPage
from ._config import Config
from ._launch import STATS_PAGE
from ._limits import ConnectionSlots
from ._metrics import Gauges, Metrics
from ._status_page import Download, StatusView, render
from .cache import Cache
from .store.counters import Counter, by_ecosystem

STATUS_PAGE = "/"
METRICS_PAGE = "/metrics"
TEXT_HTML = b"text/html; charset=utf-8"


def version() -> str:
    try:
        return importlib.metadata.version("transcache")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Observer:
    def __init__(self, config: Config, cache: Cache, slots: ConnectionSlots) -> None:
        self.config = config
        self.cache = cache
        self.slots = slots
        self.activity = Activity()
        self.metrics = Metrics(self.gauges)

    def recorders(self) -> list[Recorder]:
        """What the access log hands each finished exchange to."""
        store = self.cache.store
        counts: list[Recorder] = [] if store is None else [EcosystemCounts(store)]
        return [self.metrics, self.activity, *counts]

    def gauges(self) -> Gauges:
        store = self.cache.store
        flying = 0 if store is None else len(self.cache.downloads.in_flight())
        if store is None:
            return Gauges(self.slots.count, flying)
        return Gauges(self.slots.count, flying, store.size, store.max_size, store.entry_count)

    def pages(self) -> dict[str, AdminPage]:
        return {
            STATUS_PAGE: self.status_page,
            METRICS_PAGE: self.metrics.render,
            STATS_PAGE: self.stats_page,
        }

    def status_page(self) -> tuple[int, bytes, bytes]:
        downloads = []
        if self.cache.store is not None:
            downloads = [
                Download(flight.url, flight.written, _length(flight.content_length))
                for flight in self.cache.downloads.in_flight()
            ]
        view = StatusView(
            version(), self.activity, self.gauges(), downloads, self.config.passthrough
        )
        return 200, TEXT_HTML, render(view)

    def stats_page(self) -> tuple[int, bytes, bytes]:
        """The store's counters (every process's, this one's flushed first) and size."""
        store = self.cache.store
        if store is None:
            return 404, APPLICATION_JSON, json.dumps({"error": "no cache"}).encode()
        counters = store.counters.read()
        data = {
            "entries": store.entry_count,
            "bytes": store.size,
            "max_bytes": store.max_size,
            **{str(name): counters.get(name, 0) for name in Counter},
            "ecosystems": by_ecosystem(counters),
            "tasks": task_count(),
        }
        return 200, APPLICATION_JSON, json.dumps(data).encode()


def task_count() -> int:
    """The trio tasks alive in this process: a count that does not come back to its idle
    value after traffic is a leak (the soak benchmark watches it)."""
    pending = [trio.lowlevel.current_root_task()]
    count = 0
    while pending:
        task = pending.pop()
        if task is None:
            continue
        count += 1
        pending += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return count


def _length(content_length: bytes | None) -> int | None:
    try:
        return int(content_length) if content_length is not None else None
    except ValueError:
        return None
