"""HTTP caching decisions (RFC 9111), with no I/O: what may be stored, under which key, how
long it stays fresh, how to revalidate it, and what the client is told.

transcache is a shared cache, with these documented policies on top of the RFC:
- Requests with `Authorization` are stored in a partition named by a hash of the credential
  (unless the response says `public`), so one credential's response never answers another's.
- `Vary` is honoured with header values normalised; per-request noise (`User-Agent`,
  `Pragma`, `Cache-Control`, `npm-*`, `pacote-*`, request ids) is left out of the key even
  when an origin varies on it. `Cookie` is not noise: a response varying on it is keyed on it.
- Immutable responses (`immutable`, or `max-age` of a year or more, or an `immutable` rule)
  are never revalidated; a client's `no-cache`/`max-age=0` turns into a conditional
  revalidation for everything else.
- Freshness rules (URL pattern -> minimum TTL, immutable, never cache) come from the config.
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import fnmatch
import functools
import hashlib
import re
from dataclasses import dataclass
from enum import Enum

from ._protocol import Headers, header_value

YEAR = 365 * 24 * 3600
# Heuristic freshness (RFC 9111 4.2.2): 10% of the time since Last-Modified, at most a day.
HEURISTIC_FRACTION = 0.1
HEURISTIC_MAX = 24 * 3600
STORABLE_STATUSES = frozenset({200, 203, 300, 301, 308, 404, 410})
# Request fields never part of a key, whatever Vary says: they differ per client, not per
# representation.
NOISE_FIELDS = frozenset({"user-agent", "pragma", "cache-control", "connection"})
NOISE_PREFIXES = ("npm-", "pacote-", "x-request-id", "traceparent")
CONDITIONAL_FIELDS = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range"}
)
# Response fields a 304 must not overwrite in the stored response (RFC 9111 3.2).
NOT_UPDATED_BY_304 = frozenset({b"content-length", b"content-encoding", b"transfer-encoding"})


class RuleAction(Enum):
    MIN_TTL = "min-ttl"
    IMMUTABLE = "immutable"
    NEVER = "never"
    # An index page (a registry's list of what exists): fresh for `ttl` (the index window)
    # where the origin says less or nothing, then stale-while-revalidate.
    INDEX = "index"
    # Only changes how a client's reload is treated (strict RFC); freshness as usual.
    STRICT_RELOAD = "strict-reload"


@dataclass(frozen=True)
class Rule:
    """A freshness rule: URLs matching `pattern` (shell-style, whole URL) get `action`.
    `source` names where a rule came from (a registry convention), for Cache-Status."""

    pattern: str
    action: RuleAction
    ttl: float = 0.0
    source: str = ""

    def matches(self, url: str) -> bool:
        return fnmatch.fnmatchcase(url, self.pattern)


# How long past its index window an index page is still served at once while it is refreshed
# in the background (RFC 5861 stale-while-revalidate); past that, a client waits.
STALE_WHILE_REVALIDATE_LIMIT = 24 * 3600.0
# Stored-response directives that keep an index page out of its window: the origin asked for
# revalidation or for no shared storage.
_UNWINDOWED = ("no-store", "no-cache", "must-revalidate", "private")


def rule_for(url: str, rules: tuple[Rule, ...]) -> Rule | None:
    """The first matching rule that decides freshness (a strict-reload rule only marks)."""
    for rule in rules:
        if rule.action is not RuleAction.STRICT_RELOAD and rule.matches(url):
            return rule
    return None


def strict_reload(url: str, rules: tuple[Rule, ...]) -> bool:
    """Whether a client's reload of `url` is honoured strictly even inside an index window."""
    return any(r.action is RuleAction.STRICT_RELOAD and r.matches(url) for r in rules)


def index_window(response_headers: Headers, rule: Rule | None) -> float | None:
    """The index window that applies to this stored response, or None: only under an INDEX
    rule, only where the origin gave no explicit freshness or at most as long as the window,
    and never to a response marked no-store, no-cache, must-revalidate or private."""
    if rule is None or rule.action is not RuleAction.INDEX:
        return None
    cc = parse_cache_control(response_headers)
    if any(name in cc for name in _UNWINDOWED):
        return None
    explicit = _explicit_lifetime(cc, response_headers)
    if explicit is not None and explicit > rule.ttl:
        return None
    return rule.ttl


def parse_cache_control(headers: Headers) -> dict[str, str | None]:
    """Cache-Control directives (all header lines), names lowercased, quotes removed."""
    directives: dict[str, str | None] = {}
    for name, value in headers:
        if name.lower() != b"cache-control":
            continue
        for part in value.decode("latin-1").split(","):
            key, sep, arg = part.strip().partition("=")
            if key:
                directives.setdefault(key.lower(), arg.strip().strip('"') if sep else None)
    return directives


def _seconds(value: str | None) -> float | None:
    if value is None or not value.isdigit():
        return None
    return float(value)


HTTP_DATES_REMEMBERED = 4096


def parse_http_date(value: bytes | None) -> float | None:
    if value is None:
        return None
    return _parse_http_date(value)


# Every hit reads its entry's Date (and Expires, Last-Modified): the same few values again and
# again, and email's parser is slow.
@functools.lru_cache(maxsize=HTTP_DATES_REMEMBERED)
def _parse_http_date(value: bytes) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # asctime format: UTC by definition (RFC 9110 5.6.7)
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def format_http_date(timestamp: float) -> bytes:
    return email.utils.formatdate(timestamp, usegmt=True).encode()


# -- what may be stored ---------------------------------------------------------------------


def request_bypasses_cache(method: bytes, headers: Headers) -> bool:
    """True when the request cannot be answered from, nor stored into, the cache."""
    if method not in (b"GET", b"HEAD"):
        return True
    return "no-store" in parse_cache_control(headers)


def not_storable_reason(
    status: int, request_headers: Headers, response_headers: Headers, rule: Rule | None
) -> str | None:
    """Why this GET response must not be stored, or None when it may be."""
    if rule is not None and rule.action is RuleAction.NEVER:
        return "rule"
    if status not in STORABLE_STATUSES:
        return "status"
    response_cc = parse_cache_control(response_headers)
    if "no-store" in response_cc or "no-store" in parse_cache_control(request_headers):
        return "no-store"
    if "private" in response_cc:
        return "private"
    if header_value(response_headers, b"set-cookie") is not None:
        return "set-cookie"
    if vary_fields(response_headers) is None:
        return "vary-star"
    return None


def credential_partition(request_headers: Headers, response_headers: Headers | None) -> str:
    """The key partition for this request's credential ("" for none, or a public response).

    Every Authorization value counts, in order: two requests share a partition only when they
    carry exactly the same credentials."""
    credentials = [value for name, value in request_headers if name.lower() == b"authorization"]
    if not credentials:
        return ""
    if response_headers is not None and "public" in parse_cache_control(response_headers):
        return ""
    return "auth:" + hashlib.sha256(b"\n".join(credentials)).hexdigest()


# -- keys -----------------------------------------------------------------------------------


def vary_fields(response_headers: Headers) -> tuple[str, ...] | None:
    """Normalised field names the response varies on (noise removed); None for `Vary: *`."""
    names: set[str] = set()
    for name, value in response_headers:
        if name.lower() != b"vary":
            continue
        for field_name in value.decode("latin-1").split(","):
            field_name = field_name.strip().lower()
            if field_name == "*":
                return None
            if field_name and not _is_noise(field_name):
                names.add(field_name)
    return tuple(sorted(names))


def _is_noise(field_name: str) -> bool:
    return field_name in NOISE_FIELDS or field_name.startswith(NOISE_PREFIXES)


def _normalise_value(value: str) -> str:
    # Lists compare as their trimmed members: "a,b" and "a, b" select the same variant.
    return ",".join(part.strip() for part in value.split(",") if part.strip())


def variant_key(fields: tuple[str, ...], request_headers: Headers) -> str:
    """The secondary key: the request's normalised values for the varying fields."""
    parts = []
    for field_name in fields:
        values = [
            v.decode("latin-1") for k, v in request_headers if k.lower() == field_name.encode()
        ]
        parts.append(f"{field_name}={_normalise_value(','.join(values))}")
    return "\n".join(parts)


# Ref advertisements are keyed apart from the same URL's plain HTTP entry.
GIT_REFS_PREFIX = "git-refs "


def primary_key(url: str, partition: str) -> str:
    """GET and HEAD share entries: the key names the resource, not the method."""
    return f"{partition} {url}" if partition else url


# -- freshness ------------------------------------------------------------------------------


def _immutable(cc: dict[str, str | None], rule: Rule | None) -> bool:
    if rule is not None and rule.action is RuleAction.IMMUTABLE:
        return True
    if "no-cache" in cc or "must-revalidate" in cc:
        return False
    if "immutable" in cc:
        return True
    max_age = _seconds(cc.get("s-maxage"))  # a shared cache obeys s-maxage first
    if max_age is None:
        max_age = _seconds(cc.get("max-age"))
    return max_age is not None and max_age >= YEAR


def freshness_lifetime(response_headers: Headers, rule: Rule | None) -> float:
    """Seconds the stored response stays fresh (RFC 9111 4.2.1, shared cache)."""
    cc = parse_cache_control(response_headers)
    if _immutable(cc, rule):
        return float("inf")
    lifetime: float
    if "no-cache" in cc:
        lifetime = 0.0
    elif (explicit := _explicit_lifetime(cc, response_headers)) is not None:
        lifetime = explicit
    else:
        date = parse_http_date(header_value(response_headers, b"date"))
        modified = parse_http_date(header_value(response_headers, b"last-modified"))
        lifetime = 0.0
        if date is not None and modified is not None and modified < date:
            lifetime = min(HEURISTIC_MAX, (date - modified) * HEURISTIC_FRACTION)
    if rule is not None and rule.action is RuleAction.MIN_TTL:
        lifetime = max(lifetime, rule.ttl)
    if (window := index_window(response_headers, rule)) is not None:
        lifetime = max(lifetime, window)
    return lifetime


def _explicit_lifetime(cc: dict[str, str | None], response_headers: Headers) -> float | None:
    """The freshness the origin stated (s-maxage, max-age, Expires), or None."""
    if (value := _seconds(cc.get("s-maxage"))) is not None:
        return value
    if (value := _seconds(cc.get("max-age"))) is not None:
        return value
    if (expires := header_value(response_headers, b"expires")) is not None:
        expiry = parse_http_date(expires)
        date = parse_http_date(header_value(response_headers, b"date"))
        return max(0.0, expiry - date) if expiry is not None and date is not None else 0.0
    return None


def current_age(
    response_headers: Headers, request_time: float, response_time: float, now: float
) -> float:
    """RFC 9111 4.2.3."""
    age_value = _seconds(
        (header_value(response_headers, b"age") or b"").decode("latin-1").strip() or None
    )
    date = parse_http_date(header_value(response_headers, b"date")) or response_time
    apparent_age = max(0.0, response_time - date)
    corrected_age_value = (age_value or 0.0) + (response_time - request_time)
    corrected_initial_age = max(apparent_age, corrected_age_value)
    return corrected_initial_age + (now - response_time)


def client_wants_revalidation(request_headers: Headers) -> bool:
    """`no-cache`, `max-age=0` or `Pragma: no-cache` from the client (old pip sends these)."""
    cc = parse_cache_control(request_headers)
    if "no-cache" in cc or cc.get("max-age") == "0":
        return True
    pragma = header_value(request_headers, b"pragma")
    return not cc and pragma is not None and b"no-cache" in pragma.lower()


# -- revalidation ---------------------------------------------------------------------------


# Stored-response directives under which a shared cache may not serve a stale copy even when
# the origin cannot be reached: RFC 9111 5.2.2.2 (must-revalidate), 5.2.2.8
# (proxy-revalidate), 5.2.2.10 (s-maxage implies proxy-revalidate), 5.2.2.4 (no-cache).
STALE_FORBIDDING = ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache")


def stale_forbidden_by(stored_headers: Headers) -> str | None:
    """The stored response's directive that forbids serving it stale, or None."""
    directives = parse_cache_control(stored_headers)
    return next((name for name in STALE_FORBIDDING if name in directives), None)


def conditional_headers(stored_headers: Headers) -> Headers:
    """Validators to send upstream when revalidating a stored response."""
    out: Headers = []
    if (etag := header_value(stored_headers, b"etag")) is not None:
        out.append((b"If-None-Match", etag))
    if (modified := header_value(stored_headers, b"last-modified")) is not None:
        out.append((b"If-Modified-Since", modified))
    return out


def without_conditionals(headers: Headers) -> Headers:
    """The client's headers minus its validators and Range: what we send to fetch a full
    response we may store (the client's conditions are then answered from it)."""
    return [(k, v) for k, v in headers if k.lower() not in CONDITIONAL_FIELDS | {b"range"}]


def merge_not_modified(stored_headers: Headers, fresh_headers: Headers) -> Headers:
    """The stored headers updated with a 304's (RFC 9111 4.3.4)."""
    updates = {k.lower(): None for k, _ in fresh_headers if k.lower() not in NOT_UPDATED_BY_304}
    kept = [(k, v) for k, v in stored_headers if k.lower() not in updates]
    return kept + [(k, v) for k, v in fresh_headers if k.lower() in updates]


# -- answering the client's own conditions --------------------------------------------------


_ETAG = re.compile(rb'\s*(W/)?("[^"]*"|\*)\s*(,|$)')


def _etags(value: bytes) -> list[bytes]:
    return [match.group(2) for match in _ETAG.finditer(value)]


def not_modified_for_client(request_headers: Headers, stored_headers: Headers) -> bool:
    """Does the client's If-None-Match / If-Modified-Since match the stored response?"""
    etag = header_value(stored_headers, b"etag")
    if_none_match = header_value(request_headers, b"if-none-match")
    if if_none_match is not None:
        wanted = _etags(if_none_match)
        if b"*" in wanted:
            return True
        return etag is not None and etag.removeprefix(b"W/") in wanted
    since = parse_http_date(header_value(request_headers, b"if-modified-since"))
    modified = parse_http_date(header_value(stored_headers, b"last-modified"))
    return since is not None and modified is not None and modified <= since


NOT_MODIFIED_FIELDS = (b"etag", b"last-modified", b"cache-control", b"expires", b"vary", b"date")


def not_modified_headers(stored_headers: Headers) -> Headers:
    return [(k, v) for k, v in stored_headers if k.lower() in NOT_MODIFIED_FIELDS]


# -- ranges ---------------------------------------------------------------------------------


class Unsatisfiable(Exception):
    """The Range cannot be served from a body of this size (416)."""


def parse_range(
    request_headers: Headers, stored_headers: Headers, size: int
) -> tuple[int, int] | None:
    """The single byte range [start, end] (inclusive) to serve, or None for the whole body.

    Multiple ranges, other units, and an If-Range that does not match are answered whole,
    as RFC 9110 allows. Raises Unsatisfiable for a range past the end."""
    value = header_value(request_headers, b"range")
    if value is None:
        return None
    if_range = header_value(request_headers, b"if-range")
    if if_range is not None and not _if_range_matches(if_range, stored_headers):
        return None
    unit, _, spec = value.decode("latin-1").partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return None
    if (first and not first.isdigit()) or (last and not last.isdigit()):
        return None  # invalid range: ignored
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid range: ignored
    if start >= size:
        raise Unsatisfiable
    return start, end


def _if_range_matches(if_range: bytes, stored_headers: Headers) -> bool:
    if if_range.startswith((b'"', b"W/")):
        etag = header_value(stored_headers, b"etag")
        # If-Range needs a strong match.
        return etag is not None and not etag.startswith(b"W/") and etag == if_range.strip()
    modified = header_value(stored_headers, b"last-modified")
    return modified is not None and modified.strip() == if_range.strip()


# -- telling the client what happened (RFC 9211) --------------------------------------------


class Fwd(enum.Enum):
    """Why a response was forwarded (RFC 9211 `fwd`), as far as transcache says."""

    MISS = "miss"
    STALE = "stale"  # a stored copy was out of date (revalidated, or served stale)
    BYPASS = "bypass"  # a request the cache does not key (a git push, say)
    METHOD = "method"  # the request method is not cacheable
    REQUEST = "request"  # the request itself asked not to use the cache (or has a body)


def cache_status(
    fwd: Fwd | None,
    *,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
) -> bytes:
    """A Cache-Status member for transcache: a hit (`fwd` None) or why it was forwarded."""
    parts = ["transcache", "hit" if fwd is None else f"fwd={fwd.value}"]
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if detail:
        parts.append(f'detail="{detail}"' if not detail.isalnum() else f"detail={detail}")
    return "; ".join(parts).encode()
