"""The status page's tallies across workers: an `Activity` survives its JSON snapshot, and
`merged` adds the workers' activity up as if one process had seen every request."""

from __future__ import annotations

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


def test_merged_activity_adds_up_the_workers() -> None:
    first, second = Activity(started=100.0), Activity(started=50.0)
    first.record(exchange("https://files.test/a.whl", Outcome.MISS, 10), 0.1)
    second.record(exchange("https://files.test/a.whl", Outcome.HIT, 10), 0.1)
    second.record(exchange("https://index.test/simple/", Outcome.HIT, 5, "ann"), 0.1)
    for n in range(RECENT):
        second.record(exchange(f"https://index.test/{n}", Outcome.MISS, 1), 0.1)
    total = merged([first, second])
    assert total.started == 50.0
    assert (total.total.requests, total.total.hits, total.total.bytes) == (23, 2, 45)
    assert total.by_ecosystem[Ecosystem.PYPI].requests == 23
    assert total.by_host["files.test"].hits == 1 and total.by_host["files.test"].requests == 2
    assert total.by_user["ann"].requests == 1
    # The latest misses of all, newest first, as many as one process keeps.
    assert len(total.misses) == RECENT
    assert [m.when for m in total.misses] == sorted((m.when for m in total.misses), reverse=True)
