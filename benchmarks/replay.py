"""W7: a test suite's downloads, replayed (issue 14).

A package manager's test suite runs its client many times in a row, each run with an empty
client cache: that is where a caching proxy pays most. The suite here is `SUITE_RUNS`
consecutive `uv pip install` and `uv pip compile` runs over requirement sets drawn from
`requirements.txt` (uv resolves each set's closure from the local index), varied from run to
run as a suite's cases vary, and every `GIT_EVERY` runs a git dependency pinned at a commit
(`pkg.git`, whose in-tree build backend uv runs with nothing else to fetch). Every run has its
own fresh HOME and `--no-cache`.

Every peer runs the suite cold (just reset) and warm (right after). `direct` also runs it once
against the upstream's floor listener (`Upstream.floor_url`: no added latency, no rate limit):
the floor is the clients' own work, and `direct - floor` is the time a cache could save at best.
The table's derived columns say how much of that gap each peer closed.

The smoke dataset has no wheels: its suite is the git dependency alone, installed and compiled
(two runs), so CI exercises the workload in seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .data import GIT_PACKAGE
from .peers import Direct, Peer
from .report import Column, Table
from .upstream import Upstream
from .workloads import (
    GIT_HOST,
    INDEX_HOST,
    UV,
    Run,
    Sample,
    _cold_warm,
    _run,
    _tempdir,
    client_env,
)

SUITE_RUNS = 40
GIT_EVERY = 5  # runs 5, 10, ... add the git dependency
COMPILE_EVERY = 3  # runs 3, 6, ... are `uv pip compile`, the others `uv pip install`
# A gap smaller than this share of direct's time is noise, not something a cache can close.
GAP_MIN_SHARE = 0.10
# Top-level requirement sets from requirements.txt; each run takes the next one.
SETS: tuple[tuple[str, ...], ...] = (
    ("flask",),
    ("pytest", "pytest-xdist", "pytest-cov"),
    ("httpx",),
    ("requests",),
    ("boto3",),
    ("sqlalchemy", "alembic"),
    ("typer", "rich"),
    ("pydantic",),
    ("jinja2", "pyyaml", "python-dateutil"),
    ("gunicorn", "werkzeug", "click"),
    ("numpy",),
)


class Command(Enum):
    INSTALL = "install"
    COMPILE = "compile"


@dataclass(frozen=True)
class Step:
    """One run of the suite: a uv subcommand over some requirements."""

    command: Command
    requirements: tuple[str, ...]
    git: bool  # the git dependency too


def suite(with_wheels: bool) -> list[Step]:
    if not with_wheels:
        return [Step(Command.INSTALL, (), git=True), Step(Command.COMPILE, (), git=True)]
    return [
        Step(
            Command.COMPILE if number % COMPILE_EVERY == 0 else Command.INSTALL,
            SETS[number % len(SETS)],
            git=number % GIT_EVERY == 0,
        )
        for number in range(1, SUITE_RUNS + 1)
    ]


@dataclass(frozen=True)
class Route:
    """Where one pass of the suite sends uv: the index and git URLs, and the client's env."""

    index: str
    git: str
    peer: Peer


def _step(step: Step, route: Route, commit: str, tmp: Path) -> float:
    lines = list(step.requirements)
    if step.git:
        lines.append(f"{GIT_PACKAGE} @ git+{route.git}@{commit}")
    requirements = tmp / "requirements.in"
    requirements.write_text("\n".join(lines) + "\n")
    command = [str(UV), "pip", step.command.value, "--quiet", "--no-cache"]
    command += ["--python", sys.executable, "--index-url", route.index]
    if step.command is Command.INSTALL:
        command += ["--target", str(tmp / "target"), "-r", str(requirements)]
    else:
        command += [str(requirements), "--output-file", str(tmp / "requirements.txt")]
    seconds, _ = _run(command, client_env(route.peer, tmp))
    return seconds


def _suite_seconds(run: Run, route: Route) -> float:
    commit = run.content.package_head()
    total = 0.0
    for step in suite(run.content.requirements is not None):
        with _tempdir(run) as tmp:
            total += _step(step, route, commit, tmp)
    return total


def _floor(upstream: Upstream, peer: Direct, run: Run) -> float:
    index, git = upstream.floor_url("/simple/"), upstream.floor_url(run.content.package_path)
    return _suite_seconds(run, Route(index, git, peer))


def w7_replay(run: Run, peer: Peer) -> Sample:
    def once() -> Sample:
        route = Route(  # after the reset: a peer's port may move
            peer.url(INDEX_HOST, "/simple/"), peer.url(GIT_HOST, run.content.package_path), peer
        )
        return {"s": _suite_seconds(run, route)}

    sample = _cold_warm(run, peer, once)
    if isinstance(peer, Direct):  # after the phases: its requests are not theirs
        sample["floor_s"] = _floor(run.upstream, peer, run)
    return sample


# --- the table --------------------------------------------------------------------------------


def _speedup(phase: str) -> Callable[[Table, str], float | None]:
    def derive(table: Table, peer: str) -> float | None:
        direct, own = table.median(Direct.name, f"{phase}_s"), table.median(peer, f"{phase}_s")
        return direct / own if direct and own else None

    return derive


def _gap_closed(phase: str) -> Callable[[Table, str], float | None]:
    """Percent of (direct - floor) that the peer saved: 100 means it ran at the floor."""

    def derive(table: Table, peer: str) -> float | None:
        direct = table.median(Direct.name, f"{phase}_s")
        floor = table.median(Direct.name, "floor_s")
        own = table.median(peer, f"{phase}_s")
        if direct is None or floor is None or own is None or peer == Direct.name:
            return None
        if direct - floor < GAP_MIN_SHARE * direct:
            return None
        return 100 * (direct - own) / (direct - floor)

    return derive


def w7_table() -> Table:
    return Table(
        "W7: test-suite replay, uv runs with empty caches (the suite's total seconds)",
        [
            Column("cold_s", "cold s", 2),
            Column("warm_s", "warm s", 2),
            Column("floor_s", "floor s", 2, ratio=False),
            Column("cold_speedup", "cold speedup", 2, derive=_speedup("cold")),
            Column("warm_speedup", "warm speedup", 2, derive=_speedup("warm")),
            Column("cold_gap", "cold gap closed %", 0, derive=_gap_closed("cold")),
            Column("warm_gap", "warm gap closed %", 0, derive=_gap_closed("warm")),
            Column("cold_upstream", "upstream reqs cold", 0, ratio=False),
            Column("warm_upstream", "upstream reqs warm", 0, ratio=False),
        ],
        note=(
            f"`uv pip install` and `uv pip compile` (every {COMPILE_EVERY}rd run) over varied "
            f"requirement sets, the git dependency every {GIT_EVERY}th run; the suite's total. "
            "floor: direct against the upstream with no added latency (the clients' own work). "
            "speedup: direct's time over the peer's; gap closed: the share of direct - floor the "
            f"peer saved (blank when that gap is under {GAP_MIN_SHARE:.0%} of direct's time, as "
            "against the fast upstream). The smoke suite is the git dependency alone (2 runs)."
        ),
    )
