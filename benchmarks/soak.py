"""A bounded soak (issue 14): many clients of mixed traffic through transcache for minutes,
while its memory, open files and trio tasks are sampled, workers included.

    python -m benchmarks.soak --minutes 10          # the documented run
    python -m benchmarks.soak --minutes 0.33        # a smoke (about 20 s)
    python -m benchmarks.soak --transcache-option=--workers=2

How it works: the harness's upstream (nginx over TLS with the pages, the big file and the git
repositories) and a fresh transcache start; their idle state is sampled (the baseline); every
page and the big file are fetched once, so later requests for them are hits. Then `clients`
threads each loop over weighted actions (`WEIGHTS`) through the proxy until the time is up:
hits on a kept tunnel, misses (a page with a query no one asked before), the whole big file,
Range requests into it, a fresh tunnel dropped after the first bytes of the big file, and a
`git clone` of the package repository. A sampler thread records every process of the proxy's
tree (so it works with one process or many workers): resident memory, open fds (and how many
of them are upstream connections), and the task count from `/stats.json`.

It passes when no action failed, the RSS after the clients stopped is within
`RSS_TOLERANCE` of the RSS at half-time (`REFERENCE_SHARE`), and, within
`SETTLE_SECONDS` of the clients stopping, the fds other than pooled upstream connections and
the tasks are back to the idle baseline. Idle upstream connections stay open in the pool (up to
`MAX_IDLE_PER_ORIGIN` per origin, closed once `POOL_IDLE_SECONDS` idle when next taken or at
the pool's next sweep, which needs traffic), so those are reported apart and checked against
that cap instead. So are, with several workers,
the fds of prometheus_client's multiprocess files (`Reading.metrics_fds`): each worker opens
them on its first request and holds them until it exits, a fixed number per worker whatever
the traffic, so they are checked against `METRICS_FDS_PER_PROCESS` per process, not idle.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from transcache._idle import MAX_IDLE_PER_ORIGIN
from transcache._metrics import MULTIPROCESS_VARIABLE

from . import data, procs
from .data import Content
from .options import add_transcache_option
from .peers import Peer, Transcache
from .report import Column, Table
from .upstream import NAMES, Upstream
from .workloads import FILES_HOST, GIT_HOST, Run, SkipWorkload, client_env

CLIENTS = 64
SAMPLE_SECONDS = 5.0
# The end's RSS is compared with the RSS this far into the run. Not after the first minute:
# each miss adds a record to the metadata memo (bounded: 20,000 records, about 30 MB) and it
# fills for 5 to 8 minutes; the heap's high-water mark also rises for a few minutes as peaks
# of concurrent 1 MiB writes come. Both grew the RSS 10-17 % after the first minute of a
# 10-minute run while the memory in use did not grow (docs/performance.md, the soak).
REFERENCE_SHARE = 0.5
RSS_TOLERANCE = 0.10
SETTLE_SECONDS = 30.0  # how long fds and tasks may take to come back after the clients stop
IDLE_SETTLE = 1.0  # seconds after start before the idle baseline is read
TIMEOUT = 120.0  # one action's socket timeout
READ_SIZE = 256 * 1024
DROP_AFTER = 64 * 1024  # bytes of the big file read before a tunnel is dropped
RANGE_MAX = 1024 * 1024  # the longest Range request
# A worker's metrics (prometheus_client's multiprocess mode) live in one file per kind, a
# counter file and a histogram file, each opened once on the first request and held until the
# worker exits, by an open file and by its mmap, which keeps a duplicate of the fd.
METRICS_FDS_PER_PROCESS = 2 * 2
ROW_SECONDS = 60.0  # one table row per minute (per sample in a run shorter than 3 minutes)


class Action(Enum):
    HIT = "hit"
    MISS = "miss"
    LARGE = "large body"
    RANGE = "range"
    DROP = "dropped tunnel"
    GIT = "git clone"


# Relative weights: mostly hits, as a warm cache sees; git clones are processes, so rarer.
WEIGHTS = {
    Action.HIT: 60,
    Action.MISS: 15,
    Action.RANGE: 12,
    Action.DROP: 5,
    Action.LARGE: 3,
    Action.GIT: 1,
}


@dataclass(frozen=True)
class Reading:
    """The proxy's process tree at one moment."""

    seconds: float  # since the clients started (negative: before)
    processes: int
    rss: int  # bytes, summed over the tree
    fds: int  # summed over the tree
    upstream_sockets: int  # of those fds, connections to the upstream (the pool's)
    metrics_fds: int  # of those fds, prometheus_client's multiprocess files (workers only)
    tasks: int | None  # from /stats.json (one process's answer when there are several)
    actions: int  # done so far
    errors: int  # failed so far

    @property
    def other_fds(self) -> int:
        return self.fds - self.upstream_sockets - self.metrics_fds


@dataclass
class Tally:
    """What the clients did; threads add to it under its lock."""

    done: Counter[Action] = field(default_factory=Counter)
    failed: Counter[Action] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, action: Action) -> None:
        with self.lock:
            self.done[action] += 1

    def error(self, action: Action, exc: BaseException) -> None:
        with self.lock:
            self.failed[action] += 1
            if len(self.first_errors) < 5:
                self.first_errors.append(f"{action.value}: {type(exc).__name__}: {exc}"[:300])


class Soak:
    """One soak: the proxy, the clients' recipe, the tally and the samples."""

    def __init__(self, upstream: Upstream, content: Content, proxy: Transcache) -> None:
        self.upstream = upstream
        self.content = content
        self.proxy = proxy
        self.context = ssl.create_default_context(cafile=str(proxy.client_ca))
        self.tally = Tally()
        self.readings: list[Reading] = []
        self.started = 0.0
        self.misses = 0  # a serial for unique query strings (under the tally's lock)
        self.scratch = Path(tempfile.mkdtemp(prefix="soak-clients-"))

    # --- the clients ---------------------------------------------------------------------

    def connect(self) -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.proxy.port, context=self.context, timeout=TIMEOUT
        )
        connection.set_tunnel(FILES_HOST, self.upstream.port)
        return connection

    def get(
        self, connection: http.client.HTTPSConnection, path: str, headers: dict[str, str]
    ) -> tuple[int, int]:
        """GET `path`; (status, body length)."""
        connection.request("GET", path, headers={"Host": FILES_HOST, **headers})
        response = connection.getresponse()
        length = 0
        while chunk := response.read(READ_SIZE):
            length += len(chunk)
        return response.status, length

    def act(self, action: Action, rng: random.Random, kept: http.client.HTTPSConnection) -> None:
        """One action; raises when its answer is not what a client expects."""
        dataset = self.content.dataset
        if action is Action.GIT:
            self.clone()
            return
        if action is Action.DROP:
            self.drop()
            return
        headers: dict[str, str] = {}
        if action is Action.HIT:
            path = self.content.page_path(rng.randrange(dataset.pages))
        elif action is Action.MISS:
            with self.tally.lock:
                self.misses += 1
                serial = self.misses
            path = f"{self.content.page_path(rng.randrange(dataset.pages))}?soak={serial}"
        else:
            path = self.content.big_path
        expected_status, expected = 200, None
        if action is Action.LARGE:
            expected = dataset.big_bytes
        elif action is Action.RANGE:
            start = rng.randrange(dataset.big_bytes - 1)
            end = min(dataset.big_bytes - 1, start + rng.randrange(RANGE_MAX))
            headers["Range"] = f"bytes={start}-{end}"
            expected_status, expected = 206, end - start + 1
        status, length = self.get(kept, path, headers)
        if status != expected_status or (expected is not None and length != expected):
            raise RuntimeError(f"GET {path} {headers}: {status}, {length} bytes")

    def drop(self) -> None:
        """A fresh tunnel, the big file asked for, and the tunnel closed after its first bytes."""
        connection = self.connect()
        try:
            connection.request("GET", self.content.big_path, headers={"Host": FILES_HOST})
            response = connection.getresponse()
            if response.status != 200 or len(response.read(DROP_AFTER)) != DROP_AFTER:
                raise RuntimeError(f"dropped tunnel: {response.status}")
        finally:
            connection.close()

    def clone(self) -> None:
        home = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            url = self.upstream.url(GIT_HOST, self.content.package_path)
            done = subprocess.run(
                ["git", "clone", "--quiet", "--bare", url, str(home / "clone")],
                env=client_env(self.proxy, home),
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"git clone exited {done.returncode}: {done.stderr.strip()}")
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def client(self, number: int, stop: threading.Event) -> None:
        rng = random.Random(number)
        actions, weights = list(WEIGHTS), list(WEIGHTS.values())
        kept: http.client.HTTPSConnection | None = None
        while not stop.is_set():
            action = rng.choices(actions, weights)[0]
            kept = kept or self.connect()
            try:
                self.act(action, rng, kept)
            except Exception as exc:
                self.tally.error(action, exc)
                kept.close()
                kept = None
            else:
                self.tally.ok(action)
        if kept is not None:
            kept.close()

    def warm(self) -> None:
        """Every page and the big file once, so that later requests for them are hits."""
        connection = self.connect()
        try:
            for number in range(self.content.dataset.pages):
                self.get(connection, self.content.page_path(number), {})
            self.get(connection, self.content.big_path, {})
        finally:
            connection.close()

    # --- the samples ---------------------------------------------------------------------

    def tasks(self) -> int | None:
        url = f"http://127.0.0.1:{self.proxy.port}/stats.json"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
                value = json.load(answer).get("tasks")
        except OSError:
            return None
        return int(value) if value is not None else None

    def reading(self) -> Reading:
        assert self.proxy.pid is not None
        pids = procs.tree_pids(self.proxy.pid)
        upstream = procs.inodes_connected_to(self.upstream.port)
        with self.tally.lock:
            actions, errors = self.tally.done.total(), self.tally.failed.total()
        tasks = self.tasks()  # first: its own connection is gone when the fds are read
        return Reading(
            seconds=time.monotonic() - self.started,
            processes=len(pids),
            rss=sum(procs.rss_bytes(pid) for pid in pids),
            fds=sum(len(procs.open_fds(pid)) for pid in pids),
            upstream_sockets=sum(
                1 for pid in pids for inode in procs.socket_inodes(pid) if inode in upstream
            ),
            metrics_fds=sum(_metrics_fds(pid) for pid in pids),
            tasks=tasks,
            actions=actions + errors,
            errors=errors,
        )

    def read_every(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            self.readings.append(self.reading())

    # --- the run -------------------------------------------------------------------------

    def run(self, minutes: float, clients: int) -> Report:
        time.sleep(IDLE_SETTLE)
        self.started = time.monotonic()
        idle = self.reading()
        self.warm()
        duration = minutes * 60
        interval = min(SAMPLE_SECONDS, max(1.0, duration / 20))
        stop, sampling = threading.Event(), threading.Event()
        self.started = time.monotonic()
        sampler = threading.Thread(target=self.read_every, args=(interval, sampling))
        threads = [
            threading.Thread(target=self.client, args=(n, stop), daemon=True)
            for n in range(clients)
        ]
        try:
            sampler.start()
            for thread in threads:
                thread.start()
            stop.wait(duration)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            sampling.set()
            sampler.join()
            shutil.rmtree(self.scratch, ignore_errors=True)
        stopped = self.reading()
        settled = stopped
        deadline = time.monotonic() + SETTLE_SECONDS
        while not _settled(idle, settled) and time.monotonic() < deadline:
            time.sleep(1.0)
            settled = self.reading()
        reference = _at(self.readings or [stopped], duration * REFERENCE_SHARE)
        return Report(
            minutes, clients, self.tally, idle, reference, stopped, settled, self.readings
        )


def _metrics_fds(pid: int) -> int:
    directory = procs.environment_variable(pid, MULTIPROCESS_VARIABLE)
    return procs.fds_under(pid, directory) if directory else 0


def _tasks_back(idle: Reading, now: Reading) -> bool:
    return idle.tasks is None or (now.tasks is not None and now.tasks <= idle.tasks)


def _settled(idle: Reading, now: Reading) -> bool:
    return now.other_fds <= idle.other_fds and _tasks_back(idle, now)


def _at(readings: list[Reading], seconds: float) -> Reading:
    """The first reading taken at or after `seconds` (the last one if none is)."""
    return next((r for r in readings if r.seconds >= seconds), readings[-1])


@dataclass
class Report:
    minutes: float
    clients: int
    tally: Tally
    idle: Reading
    reference: Reading  # at half-time
    stopped: Reading  # right after the clients stopped
    settled: Reading  # when fds and tasks came back, or SETTLE_SECONDS later
    readings: list[Reading]

    def checks(self) -> list[tuple[str, str, bool]]:
        """(what, measured, passed) for each pass condition."""
        errors = self.tally.failed.total()
        growth = self.stopped.rss / self.reference.rss - 1 if self.reference.rss else 0.0
        # files.test and git.test, in each process (workers have a pool each)
        pool_cap = MAX_IDLE_PER_ORIGIN * 2 * self.settled.processes
        metrics_cap = METRICS_FDS_PER_PROCESS * self.settled.processes
        tasks = f"{self.idle.tasks} idle, {self.settled.tasks} after"
        return [
            ("no action failed", f"{errors} of {self.tally.done.total() + errors}", errors == 0),
            (
                f"RSS at the end within {RSS_TOLERANCE:.0%} of RSS after "
                f"{self.reference.seconds:.0f} s",
                f"{self.reference.rss / MB:.1f} MB then {self.stopped.rss / MB:.1f} MB "
                f"({growth:+.1%})",
                abs(growth) <= RSS_TOLERANCE,
            ),
            (
                "fds (other than pooled upstream connections and metrics files) back to idle",
                f"{self.idle.other_fds} idle, {self.settled.other_fds} after "
                f"{self.settled.seconds - self.stopped.seconds:.0f} s",
                self.settled.other_fds <= self.idle.other_fds,
            ),
            (
                f"pooled upstream connections within the pool's cap ({pool_cap})",
                f"{self.settled.upstream_sockets}",
                self.settled.upstream_sockets <= pool_cap,
            ),
            (
                f"metrics files' fds within {METRICS_FDS_PER_PROCESS} per process ({metrics_cap})",
                f"{self.settled.metrics_fds}",
                self.settled.metrics_fds <= metrics_cap,
            ),
            ("tasks back to idle", tasks, _tasks_back(self.idle, self.settled)),
        ]

    @property
    def passed(self) -> bool:
        return all(ok for _, _, ok in self.checks())

    def markdown(self) -> str:
        rows = [
            "| s | processes | RSS MB | fds | upstream conns | metrics fds | tasks | actions "
            "| errors |"
        ]
        rows.append("| ---: |" + " ---: |" * 8)
        shown = [self.idle, *self._every_row(), self.stopped, self.settled]
        labels = ["idle", *[""] * (len(shown) - 3), "stopped", "settled"]
        for label, s in zip(labels, shown, strict=True):
            when = f"{s.seconds:.0f}" + (f" ({label})" if label else "")
            rows.append(
                f"| {when} | {s.processes} | {s.rss / MB:.1f} | {s.fds} | {s.upstream_sockets} "
                f"| {s.metrics_fds} | {s.tasks if s.tasks is not None else '—'} "
                f"| {s.actions:,} | {s.errors} |"
            )
        done = ", ".join(
            f"{action.value} {self.tally.done[action]:,}" + (
                f" ({self.tally.failed[action]} failed)" if self.tally.failed[action] else ""
            )
            for action in Action
        )  # fmt: skip
        checks = "\n".join(
            f"| {what} | {measured} | {'pass' if ok else '**FAIL**'} |"
            for what, measured, ok in self.checks()
        )
        errors = "".join(f"\n- {line}" for line in self.tally.first_errors)
        return (
            f"### Soak: {self.clients} clients, {self.minutes:g} minutes: "
            f"{'pass' if self.passed else '**FAIL**'}\n\n"
            + "\n".join(rows)
            + f"\n\nActions: {done}.\n\n| check | measured | result |\n| --- | --- | --- |\n"
            + checks
            + ("\n\nFirst errors:" + errors if errors else "")
            + "\n"
        )

    def _every_row(self) -> Iterator[Reading]:
        step = ROW_SECONDS if self.minutes >= 3 else 0.0
        next_row = 0.0
        for s in self.readings:
            if s.seconds >= next_row:
                yield s
                next_row = s.seconds + step


MB = 1_000_000


@contextlib.contextmanager
def open_soak(content: Content, source: Path | None, options: list[str]) -> Iterator[Soak]:
    """The upstream and a fresh transcache (from `source`, see `Transcache`, with `options`),
    in a scratch directory removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix="transcache-soak-"))
    scratch.chmod(0o755)  # nginx's worker reads its certificate here
    upstream = Upstream.create(scratch / "upstream", content, slow=False)
    proxy = Transcache(upstream, scratch / "transcache", list(NAMES))
    proxy.source, proxy.options = source, options
    try:
        upstream.start()
        proxy.start()
        yield Soak(upstream, content, proxy)
    finally:
        proxy.stop()
        upstream.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"default {CLIENTS}")
    add_transcache_option(parser)
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    try:
        with open_soak(data.build(data.SOAK), None, args.transcache_option) as soak:
            report = soak.run(args.minutes, args.clients)
    except Exception:
        traceback.print_exc()
        return 2
    text = report.markdown()
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0 if report.passed else 1


def w8_soak(run: Run, peer: Peer) -> dict[str, float]:
    """The soak as a workload of `benchmarks/run`: transcache only (as the run starts it), for
    `run.soak_minutes`, on the soak's own content (the smoke dataset's with --smoke)."""
    if not isinstance(peer, Transcache):
        raise SkipWorkload("transcache only")
    dataset = data.SMOKE if run.content.dataset == data.SMOKE else data.SOAK
    with open_soak(data.build(dataset), peer.source, peer.options) as soak:
        report = soak.run(run.soak_minutes, CLIENTS)
    print(report.markdown(), file=sys.stderr)
    return {
        "passed": float(report.passed),
        "actions": report.tally.done.total() + report.tally.failed.total(),
        "errors": report.tally.failed.total(),
        "rss_reference_mb": report.reference.rss / MB,
        "rss_end_mb": report.stopped.rss / MB,
        "fds_idle": report.idle.other_fds,
        "fds_after": report.settled.other_fds,
        "tasks_idle": report.idle.tasks if report.idle.tasks is not None else -1,
        "tasks_after": report.settled.tasks if report.settled.tasks is not None else -1,
    }


def w8_table() -> Table:
    return Table(
        f"W8: soak, {CLIENTS} clients of mixed traffic (transcache's process tree)",
        [
            Column("passed", "passed (1 = yes)", 0, ratio=False),
            Column("actions", "actions", 0, ratio=False),
            Column("errors", "errors", 0, ratio=False),
            Column("rss_reference_mb", "RSS at half-time MB", 1, ratio=False),
            Column("rss_end_mb", "RSS at the end MB", 1, ratio=False),
            Column("fds_idle", "fds idle", 0, ratio=False),
            Column("fds_after", "fds after", 0, ratio=False),
            Column("tasks_idle", "tasks idle", 0, ratio=False),
            Column("tasks_after", "tasks after", 0, ratio=False),
        ],
        note=(
            "Hits, misses, the big file whole and in ranges, tunnels dropped mid-body, git "
            "clones (benchmarks/soak.py). fds: other than pooled upstream connections "
            "and metrics files. Pass: no "
            f"errors, RSS at the end within {RSS_TOLERANCE:.0%} of RSS at half-time, fds and "
            "tasks back to idle. The over-time table goes to stderr."
        ),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
