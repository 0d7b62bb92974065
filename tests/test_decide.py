"""The cache's decisions as a table (pure, no sockets): what a request gets for each stored
entry, rule, mode and upstream failure, and the head of an answer from a stored entry."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from transcache._errors import (
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamTLSError,
    UpstreamUnreachableError,
)
from transcache._policy import Rule, RuleAction
from transcache.cache.decide import (
    Action,
    Decision,
    Failure,
    Mode,
    Outcome,
    RequestKind,
    View,
    cache_status,
    decide,
    failure_of,
    stored_head,
)

from .test_policy import fields

NOW = 1_000_000.0
IMMUTABLE = Rule("*", RuleAction.IMMUTABLE)


@dataclass
class Entry:
    headers: list[tuple[bytes, bytes]]
    request_time: float = NOW - 100
    response_time: float = NOW - 100
    status: int = 200
    reason: bytes = b"OK"
    size: int = 10


def stored(*lines: str, age: float = 100) -> Entry:
    return Entry(fields(*lines), NOW - age, NOW - age)


def get(*lines: str, method: bytes = b"GET", body: bool = False) -> View:
    return View(RequestKind.HTTP, method, fields(*lines), body)


A, Out, F = Action, Outcome, Failure


def cc(directives: str) -> View:
    return get(f"Cache-Control: {directives}")


def stored_cc(directives: str) -> Entry:
    return stored(f"Cache-Control: {directives}")


FRESH = stored("Cache-Control: max-age=600")
STALE = stored_cc("max-age=60")


@pytest.mark.parametrize(
    ("request_view", "entry", "rule", "mode", "expected"),
    [
        # fresh, stale, immutable
        (get(), FRESH, None, Mode.ONLINE, (A.HIT, Out.HIT)),
        (get(), STALE, None, Mode.ONLINE, (A.REVALIDATE, Out.REVALIDATED)),
        (get(), STALE, IMMUTABLE, Mode.ONLINE, (A.HIT, Out.HIT)),
        # the client's own revalidation, except for immutable responses
        (cc("max-age=0"), FRESH, None, Mode.ONLINE, (A.REVALIDATE, Out.REVALIDATED)),
        (cc("no-cache"), FRESH, IMMUTABLE, Mode.ONLINE, (A.HIT, Out.HIT)),
        # misses: whole, or HEAD / Range forwarded as asked
        (get(), None, None, Mode.ONLINE, (A.MISS, Out.MISS)),
        (get(method=b"HEAD"), None, None, Mode.ONLINE, (A.FORWARD, Out.MISS)),
        (get("Range: bytes=0-1"), None, None, Mode.ONLINE, (A.FORWARD, Out.MISS)),
        # offline, and only-if-cached
        (get(), STALE, None, Mode.OFFLINE, (A.HIT, Out.OFFLINE)),
        (get(), None, None, Mode.OFFLINE, (A.OFFLINE_MISS, Out.OFFLINE_MISS)),
        (cc("only-if-cached"), STALE, None, Mode.ONLINE, (A.HIT, Out.OFFLINE)),
        (cc("only-if-cached"), None, None, Mode.ONLINE, (A.OFFLINE_MISS, Out.OFFLINE_MISS)),
        # not cacheable: method, body, the request's no-store; offline refuses them
        (get(method=b"POST"), None, None, Mode.ONLINE, (A.FORWARD, Out.UNCACHED)),
        (get(body=True), FRESH, None, Mode.ONLINE, (A.FORWARD, Out.UNCACHED)),
        (cc("no-store"), FRESH, None, Mode.ONLINE, (A.FORWARD, Out.UNCACHED)),
        (get(method=b"POST"), None, None, Mode.OFFLINE, (A.OFFLINE_MISS, Out.OFFLINE_MISS)),
        # no cache at all
        (get(), FRESH, None, Mode.PASS_THROUGH, (A.FORWARD, Out.UNCACHED)),
    ],
)  # fmt: skip
def test_what_an_http_request_gets(
    request_view: View,
    entry: Entry | None,
    rule: Rule | None,
    mode: Mode,
    expected: tuple[Action, Outcome],
) -> None:
    decision = decide(request_view, entry, rule, NOW, mode)
    assert (decision.action, decision.outcome) == expected


def test_a_range_miss_prefetches_the_whole_body_but_a_head_miss_does_not() -> None:
    assert decide(get("Range: bytes=0-1"), None, None, NOW, Mode.ONLINE).prefetch
    assert not decide(get(method=b"HEAD"), None, None, NOW, Mode.ONLINE).prefetch


def test_uncached_requests_say_why() -> None:
    assert decide(get(method=b"PUT"), None, None, NOW, Mode.ONLINE).why == "method"
    assert decide(get(body=True), None, None, NOW, Mode.ONLINE).why == "request"


@pytest.mark.parametrize(
    ("kind", "entry", "mode", "expected"),
    [
        (RequestKind.GIT_PACK, FRESH, Mode.ONLINE, (A.HIT, Out.HIT)),
        (RequestKind.GIT_PACK, None, Mode.ONLINE, (A.MISS, Out.MISS)),
        (RequestKind.GIT_PACK, None, Mode.OFFLINE, (A.OFFLINE_MISS, Out.OFFLINE_MISS)),
        # ref discovery always asks the origin while online, even with an answer stored
        (RequestKind.GIT_REFS, FRESH, Mode.ONLINE, (A.MISS, Out.MISS)),
        (RequestKind.GIT_REFS, FRESH, Mode.OFFLINE, (A.HIT, Out.OFFLINE)),
        (RequestKind.GIT_REFS, None, Mode.OFFLINE, (A.OFFLINE_MISS, Out.OFFLINE_MISS)),
        (RequestKind.GIT_OTHER, None, Mode.ONLINE, (A.FORWARD, Out.BYPASS)),
        (RequestKind.GIT_OTHER, None, Mode.OFFLINE, (A.OFFLINE_MISS, Out.OFFLINE_MISS)),
    ],
)
def test_what_a_git_request_gets(
    kind: RequestKind, entry: Entry | None, mode: Mode, expected: tuple[Action, Outcome]
) -> None:
    decision = decide(View(kind, b"POST", []), entry, None, NOW, mode)
    assert (decision.action, decision.outcome) == expected


@pytest.mark.parametrize(
    ("answered", "arrived", "expected"),
    [
        # stored from the download it waited for: that answer, not another request
        (NOW - 1, NOW - 2, (A.HIT, Out.COLLAPSED)),
        (NOW - 2, NOW - 2, (A.MISS, Out.MISS)),  # answered as it arrived: asked again
        (NOW - 2, NOW - 1, (A.MISS, Out.MISS)),  # older than the request
        (NOW - 1, None, (A.MISS, Out.MISS)),  # arrival unknown
    ],
)
def test_ref_discovery_takes_only_an_answer_the_origin_sent_after_it_arrived(
    answered: float, arrived: float | None, expected: tuple[Action, Outcome]
) -> None:
    request = View(RequestKind.GIT_REFS, b"GET", [], arrived=arrived)
    entry = Entry([], answered - 1, answered)
    decision = decide(request, entry, None, NOW, Mode.ONLINE)
    assert (decision.action, decision.outcome) == expected


@pytest.mark.parametrize(
    ("entry", "failure", "expected", "why"),
    [
        (STALE, F.UNREACHABLE, A.STALE, None),
        (STALE, F.TIMEOUT, A.STALE, None),
        (STALE, F.TLS, A.REFUSE, None),  # maybe an interception: the 502 stands
        (STALE, F.BROKEN, A.REFUSE, None),
        (None, F.UNREACHABLE, A.REFUSE, None),
        (stored_cc("max-age=0, must-revalidate"), F.UNREACHABLE, A.REFUSE, "must-revalidate"),
        (stored_cc("proxy-revalidate"), F.TIMEOUT, A.REFUSE, "proxy-revalidate"),
        (stored_cc("s-maxage=0"), F.UNREACHABLE, A.REFUSE, "s-maxage"),
        (stored_cc("no-cache"), F.UNREACHABLE, A.REFUSE, "no-cache"),
    ],
)  # fmt: skip
def test_a_stale_copy_answers_only_for_an_unreachable_origin_where_the_entry_allows(
    entry: Entry | None, failure: Failure, expected: Action, why: str | None
) -> None:
    decision = decide(get(), entry, None, NOW, Mode.ONLINE, failure)
    assert (decision.action, decision.why) == (expected, why)
    if expected is A.STALE:
        assert decision.outcome is Out.STALE
        assert decision.age == pytest.approx(100)


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (UpstreamUnreachableError("refused"), F.UNREACHABLE),
        (UpstreamTimeoutError("slow"), F.TIMEOUT),
        (UpstreamTLSError("bad certificate"), F.TLS),
        (UpstreamError("broke"), F.BROKEN),
    ],
)
def test_upstream_errors_map_to_failures(error: UpstreamError, failure: Failure) -> None:
    assert failure_of(error) is failure


@pytest.mark.parametrize(
    ("decision", "fwd_status", "extra", "value"),
    [
        (Decision(A.HIT, Out.HIT), None, {}, b"transcache; hit"),
        (Decision(A.HIT, Out.OFFLINE), None, {}, b"transcache; hit; detail=offline"),
        (
            Decision(A.STALE, Out.STALE),
            None,
            {},
            b'transcache; fwd=stale; detail="upstream-unreachable"',
        ),
        (Decision(A.HIT, Out.REVALIDATED), None, {}, b"transcache; fwd=stale; fwd-status=304"),
        (
            Decision(A.MISS, Out.MISS),
            200,
            {"stored": True},
            b"transcache; fwd=miss; fwd-status=200; stored",
        ),
        (
            Decision(A.MISS, Out.COLLAPSED),
            200,
            {"stored": True},
            b"transcache; fwd=miss; fwd-status=200; stored; collapsed",
        ),
        (
            Decision(A.MISS, Out.MISS),
            200,
            {"detail": "no-store"},
            b'transcache; fwd=miss; fwd-status=200; detail="no-store"',
        ),
        (
            Decision(A.FORWARD, Out.BYPASS, why="bypass"),
            200,
            {},
            b"transcache; fwd=bypass; fwd-status=200",
        ),
        (Decision(A.FORWARD, Out.UNCACHED, why="method"), 201, {}, b"transcache; fwd=method"),
        (Decision(A.FORWARD, Out.UNCACHED, why="request"), 200, {}, b"transcache; fwd=request"),
    ],
)  # fmt: skip
def test_cache_status_says_what_happened(
    decision: Decision, fwd_status: int | None, extra: dict[str, object], value: bytes
) -> None:
    status = cache_status(decision.outcome, fwd_status, uncached=decision.why, **extra)  # type: ignore[arg-type]
    assert status == value


# -- stored_head ---------------------------------------------------------------------------------

BODY = Entry(fields('ETag: "v1"', "Content-Type: text/plain", "Content-Length: 10", "Age: 5"))


@pytest.mark.parametrize(
    ("lines", "head_only", "status", "span", "content_length"),
    [
        ((), False, 200, (0, 10), b"10"),
        ((), True, 200, (0, 0), b"10"),
        (("Range: bytes=2-4",), False, 206, (2, 3), b"3"),
        (("Range: bytes=-3",), False, 206, (7, 3), b"3"),
        (("Range: bytes=2-4",), True, 206, (2, 0), b"3"),
        (("Range: bytes=20-30",), False, 416, (0, 0), b"0"),
        (('If-None-Match: "v1"',), False, 304, (0, 0), None),
        (('Range: bytes=2-4', 'If-Range: "v0"'), False, 200, (0, 10), b"10"),
    ],
)  # fmt: skip
def test_the_answer_from_a_stored_entry(
    lines: tuple[str, ...],
    head_only: bool,
    status: int,
    span: tuple[int, int],
    content_length: bytes | None,
) -> None:
    head = stored_head(BODY, fields(*lines), head_only, 42.9, b"transcache; hit")
    assert head.status == status
    assert (head.start, head.length) == span
    headers = dict((k.lower(), v) for k, v in head.headers)
    assert headers.get(b"content-length") == content_length
    assert headers[b"age"] == b"42"  # recomputed, never the stored one
    assert headers[b"cache-status"] == b"transcache; hit"
    if status in (200, 206, 416):
        assert headers[b"accept-ranges"] == b"bytes"
    if status == 206:
        assert headers[b"content-range"] == f"bytes {span[0]}-{span[0] + 2}/10".encode()


# -- index pages: the window, stale-while-revalidate, strict reloads ------------------------------

WINDOW = Rule("*", RuleAction.INDEX, 600.0, "pypi-project-page")
HOUR, DAY = 3600.0, 86400.0


def index_view(*lines: str, strict: bool = False) -> View:
    return View(RequestKind.HTTP, b"GET", fields(*lines), False, strict)


@pytest.mark.parametrize(
    ("age", "lines", "strict", "expected", "refresh"),
    [
        (100, (), False, (A.HIT, Out.HIT), False),
        # pip and uv send max-age=0 for every index page: ignored inside the window...
        (100, ("Cache-Control: max-age=0",), False, (A.HIT, Out.HIT), False),
        (100, ("Cache-Control: no-cache",), False, (A.HIT, Out.HIT), False),
        # ...unless strict
        (100, ("Cache-Control: max-age=0",), True, (A.REVALIDATE, Out.REVALIDATED), False),
        # past the window: answered at once and refreshed behind, for up to a day
        (700, (), False, (A.HIT, Out.STALE_WHILE_REVALIDATE), True),
        (700, ("Cache-Control: max-age=0",), False, (A.HIT, Out.STALE_WHILE_REVALIDATE), True),
        (600 + DAY - 1, (), False, (A.HIT, Out.STALE_WHILE_REVALIDATE), True),
        (600 + DAY, (), False, (A.REVALIDATE, Out.REVALIDATED), False),
        (700, ("Cache-Control: max-age=0",), True, (A.REVALIDATE, Out.REVALIDATED), False),
    ],
)
def test_an_index_page_is_answered_in_its_window_then_refreshed_behind(
    age: float,
    lines: tuple[str, ...],
    strict: bool,
    expected: tuple[Action, Outcome],
    refresh: bool,
) -> None:
    entry = stored(age=age)  # the registries as seen from here: no cache headers at all
    decision = decide(index_view(*lines, strict=strict), entry, WINDOW, NOW, Mode.ONLINE)
    assert (decision.action, decision.outcome, decision.refresh) == (*expected, refresh)
    if decision.action is A.HIT:
        assert decision.rule == "pypi-project-page"


def test_an_index_page_its_origin_marks_no_cache_gets_no_window() -> None:
    entry = stored("Cache-Control: no-cache", age=10)
    decision = decide(index_view(), entry, WINDOW, NOW, Mode.ONLINE)
    assert decision.action is A.REVALIDATE


def test_an_index_page_whose_origin_says_longer_keeps_its_own_freshness() -> None:
    entry = stored("Cache-Control: max-age=3600", age=700)
    decision = decide(index_view("Cache-Control: max-age=0"), entry, WINDOW, NOW, Mode.ONLINE)
    assert decision.action is A.REVALIDATE  # no window: the client's reload is honoured


def test_cache_status_names_the_rule_that_answered() -> None:
    window = cache_status(Out.HIT, rule="pypi-project-page")
    assert window == b'transcache; hit; detail="pypi-project-page index-window"'
    swr = cache_status(Out.STALE_WHILE_REVALIDATE, rule="npm-packument")
    assert swr == b'transcache; hit; detail="npm-packument stale-while-revalidate"'
