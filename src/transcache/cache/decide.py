"""What the cache does with a request: pure decisions, no I/O, table-tested.

`decide` looks at the request (its kind, method and headers), the stored entry for its key
(or None), the freshness rule that applies, the time and the mode, and says what to do:

- HIT: answer from the entry (fresh, immutable, or offline and stored; for git ref
  discovery, stored from the origin's answer after the request arrived: the download it
  waited for, COLLAPSED);
- REVALIDATE: ask the origin conditionally, then answer from the entry on 304;
- MISS: fetch and store while streaming (one flight per key);
- FORWARD: pass the request through uncached (not cacheable, or cacheable but answered as
  asked: a HEAD or Range miss, behind which a full download may start, `prefetch`);
- OFFLINE_MISS: offline, or the client said only-if-cached, and nothing is stored (504).

When the origin failed while it was needed (a revalidation, git ref discovery), `decide` is
asked again with the failure and says STALE (answer from the entry) or REFUSE (the error
stands, or a 504 naming the directive that forbids a stale answer). Only an origin that
cannot be reached at all may be answered for by a stale copy, and only where the stored
response allows it (RFC 9111 4.2.4, 5.2.2); after a certificate failure the error stands,
since that may be an interception attempt.

`stored_head` is the other pure half of a hit: the status, headers and byte span a client
gets from a stored entry (HEAD, Range, 416, and the client's own conditionals as 304).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from .. import _policy as policy
from .._errors import (
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamTLSError,
    UpstreamUnreachableError,
)
from .._protocol import Headers, header_value


class Mode(enum.Enum):
    ONLINE = enum.auto()
    OFFLINE = enum.auto()  # never reach an origin
    PASS_THROUGH = enum.auto()  # no cache at all (--no-cache): forward everything


class RequestKind(enum.Enum):
    HTTP = enum.auto()  # an ordinary request; cacheable if a bodiless GET or HEAD
    GIT_REFS = enum.auto()  # git ref discovery: always asks the origin while online
    GIT_PACK = enum.auto()  # a git fetch for object ids: keyed on its body, immutable
    GIT_OTHER = enum.auto()  # any other git upload-pack request: passed through


class Action(enum.Enum):
    HIT = enum.auto()
    REVALIDATE = enum.auto()
    MISS = enum.auto()
    FORWARD = enum.auto()
    OFFLINE_MISS = enum.auto()
    STALE = enum.auto()
    REFUSE = enum.auto()


class Outcome(enum.Enum):
    """What happened, in one word: the access log's last field and the counters' label."""

    HIT = "hit"
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"  # answered at once, refreshed behind
    OFFLINE = "offline"  # a hit in offline mode (maybe stale)
    REVALIDATED = "revalidated"
    STALE = "stale"
    MISS = "miss"
    COLLAPSED = "collapsed"  # joined a download already under way
    BYPASS = "bypass"  # a git request that is not keyed
    OFFLINE_MISS = "offline-miss"
    ERROR = "error"  # answered with an error made by the proxy (the origin failed, ...)
    UNCACHED = "-"  # not cacheable: method, body or the request's no-store


class Failure(enum.Enum):
    """How the origin failed, as far as a stale answer is concerned."""

    UNREACHABLE = enum.auto()  # refused, unresolvable, unroutable: nothing exchanged
    TIMEOUT = enum.auto()
    TLS = enum.auto()  # its certificate failed verification: maybe an interception
    BROKEN = enum.auto()  # it answered badly or broke off


# Failures a stale copy may answer for (RFC 9111 4.2.4: "disconnected" from the origin).
STALE_FAILURES = frozenset({Failure.UNREACHABLE, Failure.TIMEOUT})
# Cache-Status detail for a request that is not cacheable, by why.
UNCACHED_METHOD = "method"
UNCACHED_REQUEST = "request"


class Stored(Protocol):
    """What a decision needs of a stored entry."""

    @property
    def headers(self) -> Headers: ...
    @property
    def request_time(self) -> float: ...
    @property
    def response_time(self) -> float: ...


@dataclass(frozen=True)
class View:
    """What a decision needs of a request."""

    kind: RequestKind
    method: bytes
    headers: Headers
    has_body: bool = False
    # Honour the client's reload (max-age=0, no-cache) even inside an index window.
    strict_reload: bool = False
    # When the cache received it (the cache's clock); None: unknown, nothing stored is newer.
    arrived: float | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    outcome: Outcome
    age: float = 0.0
    # FORWARD: the Cache-Status fwd reason's detail; REFUSE: the directive that forbids a
    # stale answer (None when the origin's error itself stands).
    why: str | None = None
    prefetch: bool = False  # FORWARD of a cacheable miss: fetch it whole in the background
    refresh: bool = False  # HIT past its index window: revalidate it in the background
    # HIT: the rule that made it fresh, when it was not the origin's own word (Cache-Status).
    rule: str | None = None


def decide(
    request: View,
    entry: Stored | None,
    rule: policy.Rule | None,
    now: float,
    mode: Mode,
    failure: Failure | None = None,
) -> Decision:
    if failure is not None:
        return _after_failure(entry, now, failure)
    if mode is Mode.PASS_THROUGH:
        return Decision(Action.FORWARD, Outcome.UNCACHED)
    uncached = uncached_reason(request)
    offline = mode is Mode.OFFLINE
    if uncached is not None:
        if offline:
            return Decision(Action.OFFLINE_MISS, Outcome.OFFLINE_MISS)
        outcome = Outcome.BYPASS if request.kind is RequestKind.GIT_OTHER else Outcome.UNCACHED
        return Decision(Action.FORWARD, outcome, why=uncached)
    if request.kind is RequestKind.GIT_PACK:
        if entry is not None:
            return Decision(Action.HIT, Outcome.HIT)
        return _offline_miss() if offline else Decision(Action.MISS, Outcome.MISS)
    if request.kind is RequestKind.GIT_REFS:
        if offline:
            return Decision(Action.HIT, Outcome.OFFLINE) if entry is not None else _offline_miss()
        if entry is not None and _answered_since(request, entry):
            # Concurrent clones: it waited for the download of these refs under way, whose
            # answer is as current as asking again; asking again would replace the entry
            # under the next waiter, and so on.
            return Decision(Action.HIT, Outcome.COLLAPSED)
        return Decision(Action.MISS, Outcome.MISS)  # always asked; a failure decides again
    offline = offline or "only-if-cached" in policy.parse_cache_control(request.headers)
    if entry is None:
        if offline:
            return _offline_miss()
        if request.method == b"HEAD" or header_value(request.headers, b"range") is not None:
            # Forwarded as asked; a full download starts behind it so the next one hits.
            return Decision(Action.FORWARD, Outcome.MISS, prefetch=request.method == b"GET")
        return Decision(Action.MISS, Outcome.MISS)
    return _stored(request, entry, rule, now, offline)


def _stored(
    request: View, entry: Stored, rule: policy.Rule | None, now: float, offline: bool
) -> Decision:
    """A cacheable HTTP request with an entry stored: fresh, inside its index window (where
    the client's reload is not honoured, unless strict), past it (stale-while-revalidate,
    for a while), or stale."""
    age = _age(entry, now)
    lifetime = policy.freshness_lifetime(entry.headers, rule)
    window = policy.index_window(entry.headers, rule)
    reload = lifetime != float("inf") and policy.client_wants_revalidation(request.headers)
    if window is not None and not request.strict_reload:
        reload = False  # squid's ignore-reload: pip and uv send max-age=0 for every index page
    named = rule.source if rule is not None and rule.source else None
    if age < lifetime and not reload:
        return Decision(Action.HIT, Outcome.HIT, age, rule=named if window else None)
    if offline:
        return Decision(Action.HIT, Outcome.OFFLINE, age)
    if window is not None and not reload and age < lifetime + policy.STALE_WHILE_REVALIDATE_LIMIT:
        return Decision(Action.HIT, Outcome.STALE_WHILE_REVALIDATE, age, refresh=True, rule=named)
    return Decision(Action.REVALIDATE, Outcome.REVALIDATED, age)


def uncached_reason(request: View) -> str | None:
    """Why the request can be neither answered from nor stored into the cache, or None."""
    if request.kind is RequestKind.GIT_OTHER:
        return "bypass"
    if request.kind is not RequestKind.HTTP:
        return None
    if request.method not in (b"GET", b"HEAD"):
        return UNCACHED_METHOD
    if request.has_body or policy.request_bypasses_cache(request.method, request.headers):
        return UNCACHED_REQUEST
    return None


def _after_failure(entry: Stored | None, now: float, failure: Failure) -> Decision:
    if entry is None or failure not in STALE_FAILURES:
        return Decision(Action.REFUSE, Outcome.MISS)
    forbidden = policy.stale_forbidden_by(entry.headers)
    if forbidden is not None:
        return Decision(Action.REFUSE, Outcome.MISS, why=forbidden)
    return Decision(Action.STALE, Outcome.STALE, _age(entry, now))


def _answered_since(request: View, entry: Stored) -> bool:
    """Whether the origin sent `entry` after `request` arrived."""
    return request.arrived is not None and entry.response_time > request.arrived


def _offline_miss() -> Decision:
    return Decision(Action.OFFLINE_MISS, Outcome.OFFLINE_MISS)


def _age(entry: Stored, now: float) -> float:
    return policy.current_age(entry.headers, entry.request_time, entry.response_time, now)


# -- what the client is told: Cache-Status (RFC 9211) ----------------------------------------


def cache_status(
    outcome: Outcome,
    fwd_status: int | None = None,
    *,
    stored: bool = False,
    detail: str | None = None,
    uncached: str | None = None,
    rule: str | None = None,
) -> bytes:
    """The Cache-Status value (RFC 9211) for what happened; `uncached` is why a request
    was not cacheable (its method, or the request itself), `rule` what made a hit fresh."""
    Fwd = policy.Fwd
    if uncached in (UNCACHED_METHOD, UNCACHED_REQUEST):
        return policy.cache_status(Fwd(uncached))
    if outcome is Outcome.BYPASS:
        return policy.cache_status(Fwd.BYPASS, fwd_status=fwd_status)
    if outcome is Outcome.HIT:
        return policy.cache_status(None, detail=f"{rule} index-window" if rule else None)
    if outcome is Outcome.STALE_WHILE_REVALIDATE:
        return policy.cache_status(None, detail=f"{rule or 'index'} stale-while-revalidate")
    if outcome is Outcome.OFFLINE:
        return policy.cache_status(None, detail="offline")
    if outcome is Outcome.STALE:
        return policy.cache_status(Fwd.STALE, detail="upstream-unreachable")
    if outcome is Outcome.REVALIDATED:
        return policy.cache_status(Fwd.STALE, fwd_status=304)
    return policy.cache_status(
        Fwd.MISS,
        fwd_status=fwd_status,
        stored=stored,
        collapsed=outcome is Outcome.COLLAPSED,
        detail=detail,
    )


def failure_of(error: UpstreamError) -> Failure:
    """How the origin failed, from the error the upstream pool raised."""
    if isinstance(error, UpstreamUnreachableError):
        return Failure.UNREACHABLE
    if isinstance(error, UpstreamTimeoutError):
        return Failure.TIMEOUT
    if isinstance(error, UpstreamTLSError):
        return Failure.TLS
    return Failure.BROKEN


# -- the head of an answer from a stored entry ------------------------------------------------


class StoredEntry(Stored, Protocol):
    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> bytes: ...
    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class StoredHead:
    """What a client gets from a stored entry: the head, and which bytes of the body
    (`length` 0: none, for HEAD, 304 and 416). `whole`: the stored response as stored (no
    304, 206 or 416), whose head differs from one answer to the next only in its
    `PER_ANSWER` fields, so it can be rendered once per entry."""

    status: int
    reason: bytes
    headers: Headers
    start: int = 0
    length: int = 0
    whole: bool = False


# Stored fields the answer recomputes.
_RECOMPUTED = (b"content-length", b"age", b"accept-ranges", b"content-range")
# The fields of a whole answer's head that change with every answer (lowercase).
PER_ANSWER = frozenset({b"age", b"cache-status"})


def stored_head(
    entry: StoredEntry, request_headers: Headers, head_only: bool, age: float, status: bytes
) -> StoredHead:
    """The answer to a request from `entry`: 304 when the client's own validators match,
    416 for a range it cannot satisfy, 206 for one it can, else the stored status whole.
    `status` is the Cache-Status value."""
    common: Headers = [(b"Age", str(int(age)).encode()), (b"Cache-Status", status)]
    if policy.not_modified_for_client(request_headers, entry.headers):
        return StoredHead(304, b"Not Modified", policy.not_modified_headers(entry.headers) + common)
    base = [(k, v) for k, v in entry.headers if k.lower() not in _RECOMPUTED]
    base += [(b"Accept-Ranges", b"bytes"), *common]
    try:
        span = policy.parse_range(request_headers, entry.headers, entry.size)
    except policy.Unsatisfiable:
        headers = [
            *base,
            (b"Content-Range", f"bytes */{entry.size}".encode()),
            (b"Content-Length", b"0"),
        ]
        return StoredHead(416, b"Range Not Satisfiable", headers)
    if span is None or entry.status != 200:
        headers = [*base, (b"Content-Length", str(entry.size).encode())]
        length = 0 if head_only else entry.size
        return StoredHead(entry.status, entry.reason, headers, 0, length, whole=True)
    start, end = span
    headers = [
        *base,
        (b"Content-Range", f"bytes {start}-{end}/{entry.size}".encode()),
        (b"Content-Length", str(end - start + 1).encode()),
    ]
    length = 0 if head_only else end - start + 1
    return StoredHead(206, b"Partial Content", headers, start, length)
