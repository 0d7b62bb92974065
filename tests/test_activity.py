"""The status page's tallies across workers: an `Activity` survives its JSON snapshot, and
`merged` adds the workers' activity up as if one process had seen every request."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from transcache._access import Exchange
from transcache._activity import RECENT, Activity, merged
from transcache._registries import Ecosystem
from transcache.cache import Outcome


def exchange(url: str, outcome: Outcome, size: int, user: str | None = None) -> Exchange:
    return Exchange(
        "127.0.0.1:1",
        "GET",
        url,
        status=200,
        bytes=size,
        outcome=outcome,
        ecosystem=Ecosystem.PYPI,
        user=user,
    )


def test_an_activity_survives_its_snapshot() -> None:
    activity = Activity()
    activity.record(exchange("https://files.test/a.whl", Outcome.MISS, 10, "ann"), 0.1)
    activity.record(exchange("https://files.test/a.whl", Outcome.HIT, 10), 0.1)
    assert Activity.from_json(activity.to_json()) == activity


def test_merged_activity_adds_up_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(1000.0)
    clock = SimpleNamespace(time=lambda: next(ticks))  # each record a second later
    monkeypatch.setattr("transcache._activity.time", clock)
    first, second = Activity(started=100.0), Activity(started=50.0)
    first.record(exchange("https://files.test/a.whl", Outcome.MISS, 10), 0.1)
    second.record(exchange("https://files.test/a.whl", Outcome.HIT, 10), 0.1)
    second.record(exchange("https://index.test/simple/", Outcome.HIT, 5, "ann"), 0.1)
    for n in range(RECENT):
        second.record(exchange(f"https://index.test/{n}", Outcome.MISS, 1), 0.1)
    total = merged([first, second])
    assert total.started == 50.0
    requests = 3 + RECENT
    assert (total.total.requests, total.total.hits, total.total.bytes) == (requests, 2, 45)
    assert total.by_ecosystem[Ecosystem.PYPI].requests == requests
    assert total.by_host["files.test"].hits == 1 and total.by_host["files.test"].requests == 2
    assert total.by_user["ann"].requests == 1
    # The latest misses of all, newest first, as many as one process keeps.
    # The first worker's a.whl miss came before all of the second's: it is the one dropped.
    latest = [f"https://index.test/{n}" for n in reversed(range(RECENT))]
    assert [miss.url for miss in total.misses] == latest
