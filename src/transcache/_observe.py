"""What a proxy tells about itself: the Prometheus metrics (/metrics), the status page (/),
and the live counters of `transcache status` and `cache stats` (/stats.json). One
`Observer` per proxy gathers them: it hands the access log its recorders and the upstream
pool its watcher, reads the state gauges from the server and the store, and registers the
three pages with the admin registry.

The workers of `transcache run --workers N` show one proxy. The event metrics add up across
them in prometheus_client's multiprocess files (`_metrics`). For the rest, each worker writes
a snapshot of its own view (activity, open connections, downloads) to the run dir every
SHARE_SECONDS (`share`), and the worker answering a page adds its live view to the others'
snapshots: their figures lag by a second at most. The store's counters (`/stats.json`) are
flushed as often, so `cache stats` and `transcache status` lag as little."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import trio

from ._access import Recorder
from ._activity import Activity, EcosystemCounts, merged
from ._admin import APPLICATION_JSON, AdminPage
from ._config import Config
from ._launch import STATS_PAGE
from ._limits import ConnectionSlots
from ._metrics import Gauges, Metrics
from ._status_page import Download, StatusView, render
from ._workers import SNAPSHOT_PREFIX, snapshot_path
from .cache import Cache
from .store.counters import Counter, by_ecosystem
from .store.layout import replace_private

STATUS_PAGE = "/"
METRICS_PAGE = "/metrics"
TEXT_HTML = b"text/html; charset=utf-8"
# How often a worker writes its view for the others (and flushes the store's counters).
SHARE_SECONDS = 1.0


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
        # The run dir shared with the other workers, while `share` runs; None: one process.
        self.run_dir: Path | None = None

    def recorders(self) -> list[Recorder]:
        """What the access log hands each finished exchange to."""
        store = self.cache.store
        counts: list[Recorder] = [] if store is None else [EcosystemCounts(store)]
        return [self.metrics, self.activity, *counts]

    def gauges(self, others: list[dict[str, Any]] | None = None) -> Gauges:
        """The state of the whole proxy: this process, plus the other workers' snapshots
        (read here unless the caller has them)."""
        others = self._others() if others is None else others
        connections = self.slots.count + sum(other["connections_open"] for other in others)
        flying = len(self._downloads()) + sum(len(other["downloads"]) for other in others)
        store = self.cache.store
        if store is None:
            return Gauges(connections, flying)
        return Gauges(
            connections, flying, store.size, store.max_size, store.entry_count, self._tally(others)
        )

    def _tally(self, others: list[dict[str, Any]]) -> dict[str, int] | None:
        """The shared tier's counts, this process's plus the other workers'."""
        shared = self.cache.shared
        if shared is None:
            return None
        tally = dict(shared.tier.tally)
        for other in others:
            for name, value in other.get("shared", {}).items():
                tally[name] = tally.get(name, 0) + value
        return tally

    async def share(self, run_dir: Path) -> None:
        """In a worker: write this process's view for the other workers, every SHARE_SECONDS
        (when it changed), until cancelled."""
        self.run_dir = run_dir
        path = snapshot_path(run_dir, os.getpid())
        written = b""
        while True:
            snapshot = json.dumps(self._snapshot()).encode()
            if snapshot != written:
                replace_private(run_dir, path, snapshot)
                written = snapshot
            if self.cache.store is not None:
                self.cache.store.flush_counters()
            await trio.sleep(SHARE_SECONDS)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "activity": self.activity.to_json(),
            "connections_open": self.slots.count,
            "downloads": [dataclasses.astuple(download) for download in self._downloads()],
            "shared": {} if self.cache.shared is None else dict(self.cache.shared.tier.tally),
        }

    def _others(self) -> list[dict[str, Any]]:
        """The other workers' latest snapshots (none outside `share`)."""
        if self.run_dir is None:
            return []
        own = snapshot_path(self.run_dir, os.getpid())
        others = []
        for path in self.run_dir.glob(f"{SNAPSHOT_PREFIX}*.json"):
            if path == own:
                continue
            try:
                others.append(json.loads(path.read_bytes()))
            except (OSError, ValueError):
                continue  # a worker that just ended: its snapshot went with it
        return others

    def _downloads(self) -> list[Download]:
        if self.cache.store is None:
            return []
        return [
            Download(flight.url, flight.written, _length(flight.content_length))
            for flight in self.cache.downloads.in_flight()
        ]

    def pages(self) -> dict[str, AdminPage]:
        return {
            STATUS_PAGE: self.status_page,
            METRICS_PAGE: self.metrics.render,
            STATS_PAGE: self.stats_page,
        }

    def status_page(self) -> tuple[int, bytes, bytes]:
        others = self._others()
        activity = self.activity
        downloads = self._downloads()
        if others:
            activity = merged([activity, *(Activity.from_json(o["activity"]) for o in others)])
            downloads += [Download(*download) for o in others for download in o["downloads"]]
        shared = None if self.cache.shared is None else self.cache.shared.tier.status
        view = StatusView(
            version(), activity, self.gauges(others), downloads, self.config.passthrough, shared
        )
        return 200, TEXT_HTML, render(view)

    def stats_page(self) -> tuple[int, bytes, bytes]:
        """The store's counters (every process's, this one's flushed first) and size, and
        which process answered."""
        store = self.cache.store
        if store is None:
            return 404, APPLICATION_JSON, json.dumps({"error": "no cache"}).encode()
        counters = store.counters.read()
        data: dict[str, object] = {
            "pid": os.getpid(),  # which process answered: one of the workers, if any
            "entries": store.entry_count,
            "bytes": store.size,
            "max_bytes": store.max_size,
            **{str(name): counters.get(name, 0) for name in Counter},
            "ecosystems": by_ecosystem(counters),
            "tasks": task_count(),
        }
        if self.cache.shared is not None:
            data["shared_cache"] = self.cache.shared.tier.status
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
