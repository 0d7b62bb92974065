"""RFC 9111 decisions, pure: what is stored and under which key, how long it stays fresh, how
it is revalidated, how the client's own conditions and ranges are answered, and what the
Cache-Status header says."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import pytest

from transcache._policy import (
    YEAR,
    Fwd,
    Rule,
    RuleAction,
    Unsatisfiable,
    cache_status,
    client_wants_revalidation,
    conditional_headers,
    credential_partition,
    current_age,
    format_http_date,
    freshness_lifetime,
    index_window,
    merge_not_modified,
    not_modified_for_client,
    not_modified_headers,
    not_storable_reason,
    parse_cache_control,
    parse_range,
    primary_key,
    request_bypasses_cache,
    rule_for,
    strict_reload,
    variant_key,
    vary_fields,
    without_conditionals,
)
from transcache._protocol import Headers

T0 = 1_700_000_000.0  # a whole second, so HTTP dates round-trip exactly
DAY = 24 * 3600
URL = "https://files.test/simple/pkg/"


def fields(*lines: str) -> Headers:
    """Header lines written as on the wire: fields("Vary: Accept", "ETag: \"a\"")."""
    out: Headers = []
    for line in lines:
        name, _, value = line.partition(":")
        out.append((name.strip().encode("latin-1"), value.strip().encode("latin-1")))
    return out


def http_date(timestamp: float) -> str:
    return format_http_date(timestamp).decode()


DATE = f"Date: {http_date(T0)}"


# -- what may be stored -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "request_lines", "response_lines", "rule", "reason"),
    [
        (200, (), (), None, None),
        (203, (), (), None, None),
        (301, (), (), None, None),
        (308, (), (), None, None),
        (404, (), (), None, None),
        (410, (), (), None, None),
        (206, (), (), None, "status"),
        (302, (), (), None, "status"),
        (500, (), (), None, "status"),
        (200, (), ("Cache-Control: no-store",), None, "no-store"),
        (200, ("Cache-Control: no-store",), (), None, "no-store"),
        (200, (), ("Cache-Control: max-age=60, NO-STORE",), None, "no-store"),
        (200, (), ("Cache-Control: private",), None, "private"),
        (200, (), ('Cache-Control: private="Set-Cookie"',), None, "private"),
        (200, (), ("Set-Cookie: session=1",), None, "set-cookie"),
        (200, (), ("Vary: *",), None, "vary-star"),
        (200, (), ("Vary: Accept, *",), None, "vary-star"),
        (200, (), (), Rule("*", RuleAction.NEVER), "rule"),
        # Revalidated on every use, but stored.
        (200, (), ("Cache-Control: no-cache",), None, None),
        # Stored in the credential's own partition (see credential_partition).
        (200, ("Authorization: Bearer secret",), (), None, None),
        (200, (), ("Vary: Accept, User-Agent",), None, None),
    ],
)
def test_storability_and_the_reason_it_is_refused(
    status: int,
    request_lines: tuple[str, ...],
    response_lines: tuple[str, ...],
    rule: Rule | None,
    reason: str | None,
) -> None:
    assert not_storable_reason(status, fields(*request_lines), fields(*response_lines), rule) == (
        reason
    )


def test_a_never_rule_wins_over_a_storable_response() -> None:
    rule = Rule("https://files.test/private/*", RuleAction.NEVER)
    response = fields("Cache-Control: public, max-age=3600")
    assert not_storable_reason(200, [], response, rule) == "rule"


@pytest.mark.parametrize(
    ("method", "request_lines", "bypasses"),
    [
        (b"GET", (), False),
        (b"HEAD", (), False),
        (b"GET", ("Cache-Control: max-age=0",), False),
        (b"GET", ("Cache-Control: no-store",), True),
        (b"POST", (), True),
        (b"PUT", (), True),
        (b"DELETE", (), True),
        (b"OPTIONS", (), True),
    ],
)
def test_only_get_and_head_without_no_store_use_the_cache(
    method: bytes, request_lines: tuple[str, ...], bypasses: bool
) -> None:
    assert request_bypasses_cache(method, fields(*request_lines)) is bypasses


# -- Cache-Control ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ((), {}),
        (("Cache-Control: max-age=60",), {"max-age": "60"}),
        (("Cache-Control: max-age=60, no-cache",), {"max-age": "60", "no-cache": None}),
        (("Cache-Control: Max-Age=60, PUBLIC",), {"max-age": "60", "public": None}),
        (('Cache-Control: max-age="60"',), {"max-age": "60"}),
        (("Cache-Control: , ,no-store,",), {"no-store": None}),
        (("Cache-Control: max-age=60", "cache-control: public"), {"max-age": "60", "public": None}),
        # Duplicates: the first occurrence is used (RFC 9111 4.2.1).
        (("Cache-Control: max-age=60, max-age=0",), {"max-age": "60"}),
        (("Pragma: no-cache", "Expires: 0"), {}),
    ],
)
def test_cache_control_directives_from_every_line(
    lines: tuple[str, ...], expected: dict[str, str | None]
) -> None:
    assert parse_cache_control(fields(*lines)) == expected


# -- Vary and the secondary key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ((), ()),
        (("Vary: Accept",), ("accept",)),
        (("Vary: Accept-Encoding, ACCEPT",), ("accept", "accept-encoding")),
        (("Vary: accept", "Vary: Accept-Language, accept"), ("accept", "accept-language")),
        (("Vary: ,Accept,,",), ("accept",)),
        # Noise: differs per client, not per representation.
        (("Vary: User-Agent",), ()),
        (("Vary: Accept, User-Agent, Pragma",), ("accept",)),
        (("Vary: npm-session, npm-command, pacote-req-type, Accept",), ("accept",)),
        (("Vary: *",), None),
        (("Vary: Accept", "Vary: *"), None),
    ],
)
def test_vary_names_are_normalised_and_noise_is_dropped(
    lines: tuple[str, ...], expected: tuple[str, ...] | None
) -> None:
    assert vary_fields(fields(*lines)) == expected


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("Accept: application/json, text/html",), ("Accept: application/json,text/html",)),
        (("Accept:  text/html ,  */*  ",), ("accept: text/html,*/*",)),
        (("Accept: text/html", "Accept: */*"), ("Accept: text/html, */*",)),
        (("Accept: text/html", "User-Agent: pip/24"), ("Accept: text/html", "User-Agent: uv/0.4")),
    ],
)
def test_equivalent_request_values_select_the_same_variant(
    first: tuple[str, ...], second: tuple[str, ...]
) -> None:
    vary = vary_fields(fields("Vary: Accept, User-Agent"))
    assert vary == ("accept",)
    assert variant_key(vary, fields(*first)) == variant_key(vary, fields(*second))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("Accept: application/vnd.pypi.simple.v1+json",), ("Accept: text/html",)),
        (("Accept: text/html",), ()),
        (("Accept: text/html, */*",), ("Accept: */*, text/html",)),
    ],
)
def test_different_request_values_select_different_variants(
    first: tuple[str, ...], second: tuple[str, ...]
) -> None:
    vary = ("accept",)
    assert variant_key(vary, fields(*first)) != variant_key(vary, fields(*second))


def test_a_response_without_vary_has_one_variant_for_every_request() -> None:
    vary = vary_fields(fields("Content-Type: text/html"))
    assert vary == ()
    assert variant_key(vary, fields("Accept: text/html")) == variant_key(vary, [])


def test_the_variant_key_covers_every_varying_field() -> None:
    vary = vary_fields(fields("Vary: Accept, Accept-Encoding"))
    assert vary is not None
    gzip = variant_key(vary, fields("Accept: text/html", "Accept-Encoding: gzip"))
    identity = variant_key(vary, fields("Accept: text/html", "Accept-Encoding: identity"))
    assert gzip != identity


def test_a_response_varying_on_cookie_is_not_shared_between_cookies() -> None:
    response = fields("Vary: Cookie")
    vary = vary_fields(response)
    stored = not_storable_reason(200, fields("Cookie: session=alice"), response, None)
    kept_apart = vary is None or variant_key(vary, fields("Cookie: session=alice")) != (
        variant_key(vary, fields("Cookie: session=bob"))
    )
    assert stored is not None or kept_apart


# -- credential partitions and primary keys ---------------------------------------------------


def test_requests_without_credentials_share_the_public_partition() -> None:
    assert credential_partition(fields("Accept: */*"), None) == ""
    assert primary_key(URL, "") == URL


def test_each_credential_gets_its_own_partition() -> None:
    alice = credential_partition(fields("Authorization: Bearer alice"), None)
    alice_again = credential_partition(fields("authorization: Bearer alice"), None)
    bob = credential_partition(fields("Authorization: Bearer bob"), None)
    assert alice == "auth:" + hashlib.sha256(b"Bearer alice").hexdigest()
    assert alice == alice_again
    assert alice != bob
    assert "alice" not in alice  # the credential itself is never written to disk
    keys = {primary_key(URL, ""), primary_key(URL, alice), primary_key(URL, bob)}
    assert len(keys) == 3


def test_every_authorization_value_enters_the_partition() -> None:
    # Two clients that each send an empty Authorization and then their own token.
    alice = credential_partition(fields("Authorization: ", "Authorization: Bearer alice"), None)
    bob = credential_partition(fields("Authorization: ", "Authorization: Bearer bob"), None)
    assert alice != bob
    assert alice and bob


@pytest.mark.parametrize(
    ("response_lines", "shared"),
    [
        (("Cache-Control: public, max-age=60",), True),
        (("Cache-Control: max-age=60",), False),
        ((), False),
    ],
)
def test_a_public_response_to_a_credentialed_request_is_shared(
    response_lines: tuple[str, ...], shared: bool
) -> None:
    partition = credential_partition(
        fields("Authorization: Basic dXNlcg=="), fields(*response_lines)
    )
    assert (partition == "") is shared


# -- freshness --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "lifetime"),
    [
        ((DATE,), 0.0),
        ((DATE, "Cache-Control: max-age=60"), 60.0),
        ((DATE, 'Cache-Control: max-age="90"'), 90.0),
        ((DATE, "Cache-Control: s-maxage=30, max-age=60"), 30.0),
        ((DATE, "Cache-Control: max-age=60, s-maxage=600"), 600.0),
        ((DATE, "Cache-Control: no-cache, max-age=60"), 0.0),
        ((DATE, "Cache-Control: max-age=-5"), 0.0),
        ((DATE, "Cache-Control: max-age=31535999"), float(YEAR - 1)),
        ((DATE, "Cache-Control: max-age=31536000, must-revalidate"), float(YEAR)),
        # Expires is relative to Date; max-age beats it.
        ((DATE, f"Expires: {http_date(T0 + 3600)}"), 3600.0),
        ((DATE, f"Expires: {http_date(T0 - 3600)}"), 0.0),
        ((DATE, "Expires: 0"), 0.0),
        ((f"Expires: {http_date(T0 + 3600)}",), 0.0),
        ((DATE, f"Expires: {http_date(T0 + 3600)}", "Cache-Control: max-age=10"), 10.0),
        # Heuristic: 10% of the time since Last-Modified, at most a day.
        ((DATE, f"Last-Modified: {http_date(T0 - 1000)}"), 100.0),
        ((DATE, f"Last-Modified: {http_date(T0 - 30 * DAY)}"), float(DAY)),
        ((DATE, f"Last-Modified: {http_date(T0 + 1000)}"), 0.0),
        ((f"Last-Modified: {http_date(T0 - 1000)}",), 0.0),
        ((DATE, f"Last-Modified: {http_date(T0 - 1000)}", "Expires: 0"), 0.0),
        ((DATE, f"Last-Modified: {http_date(T0 - 1000)}", "Cache-Control: max-age=5"), 5.0),
    ],
)
def test_freshness_lifetime_without_rules(lines: tuple[str, ...], lifetime: float) -> None:
    assert freshness_lifetime(fields(*lines), None) == lifetime


@pytest.mark.parametrize(
    "lines",
    [
        ("Cache-Control: immutable",),
        ("Cache-Control: max-age=31536000",),
        ("Cache-Control: public, max-age=315360000, immutable",),
        ("Cache-Control: s-maxage=31536000",),
    ],
)
def test_immutable_responses_are_fresh_forever(lines: tuple[str, ...]) -> None:
    headers = fields(DATE, *lines)
    assert freshness_lifetime(headers, None) == float("inf")


@pytest.mark.parametrize(
    "lines",
    [
        ("Cache-Control: immutable, no-cache",),
        ("Cache-Control: max-age=31536000, must-revalidate",),
        ("Cache-Control: max-age=86400",),
        ("Cache-Control: s-maxage=60, max-age=31536000",),
        (),
    ],
)
def test_responses_that_ask_for_revalidation_are_not_immutable(lines: tuple[str, ...]) -> None:
    headers = fields(DATE, *lines)
    assert freshness_lifetime(headers, None) < float("inf")


def test_s_maxage_zero_overrides_a_year_long_max_age() -> None:
    headers = fields(DATE, "Cache-Control: s-maxage=0, max-age=31536000")
    assert freshness_lifetime(headers, None) == 0.0


@pytest.mark.parametrize(
    ("lines", "rule", "lifetime"),
    [
        (("Cache-Control: max-age=60",), Rule("*", RuleAction.MIN_TTL, 600.0), 600.0),
        (("Cache-Control: max-age=6000",), Rule("*", RuleAction.MIN_TTL, 600.0), 6000.0),
        ((), Rule("*", RuleAction.MIN_TTL, 600.0), 600.0),
        (("Cache-Control: no-cache",), Rule("*", RuleAction.IMMUTABLE), float("inf")),
        ((), Rule("*", RuleAction.IMMUTABLE), float("inf")),
    ],
)
def test_freshness_rules_raise_the_lifetime(
    lines: tuple[str, ...], rule: Rule, lifetime: float
) -> None:
    assert freshness_lifetime(fields(DATE, *lines), rule) == lifetime


INDEX = Rule("*", RuleAction.INDEX, 600.0, "pypi-project-page")


@pytest.mark.parametrize(
    ("lines", "window"),
    [
        ((), 600.0),  # the registries as seen from here: no cache headers at all
        (("Cache-Control: max-age=0",), 600.0),
        (("Cache-Control: public, max-age=600",), 600.0),
        (("Cache-Control: max-age=3600",), None),  # the origin says more: it wins
        (("Expires: Tue, 14 Nov 2023 23:13:20 GMT",), None),  # an hour after DATE
        (("Cache-Control: no-cache",), None),
        (("Cache-Control: max-age=60, must-revalidate",), None),
        (("Cache-Control: private",), None),
        (("Cache-Control: no-store",), None),
    ],
)
def test_an_index_page_gets_the_window_unless_its_origin_says_otherwise(
    lines: tuple[str, ...], window: float | None
) -> None:
    headers = fields(DATE, *lines)
    assert index_window(headers, INDEX) == window
    if window is not None:
        assert freshness_lifetime(headers, INDEX) == window


def test_the_window_is_only_for_index_rules() -> None:
    assert index_window(fields(DATE), None) is None
    assert index_window(fields(DATE), Rule("*", RuleAction.MIN_TTL, 600.0)) is None


def test_a_strict_reload_rule_marks_without_deciding_freshness() -> None:
    strict = Rule("https://index.test/*", RuleAction.STRICT_RELOAD)
    never = Rule("*", RuleAction.NEVER)
    assert rule_for("https://index.test/simple/pkg/", (strict, never)) is never
    assert strict_reload("https://index.test/simple/pkg/", (strict, never))
    assert not strict_reload("https://other.test/simple/pkg/", (strict, never))


@pytest.fixture
def new_york_time() -> Iterator[None]:
    """Local time five hours behind UTC, to catch dates read as local time."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.mark.parametrize(
    "expires",
    [
        "Fri, 14 Nov 2023 23:13:20 GMT",  # IMF-fixdate
        "Tuesday, 14-Nov-23 23:13:20 GMT",  # obsolete RFC 850
    ],
)
def test_expires_is_read_as_utc_whatever_the_local_time_zone(
    new_york_time: None, expires: str
) -> None:
    headers = fields(DATE, f"Expires: {expires}")
    assert freshness_lifetime(headers, None) == 3600.0


def test_an_asctime_expires_is_read_as_utc_whatever_the_local_time_zone(
    new_york_time: None,
) -> None:
    headers = fields(DATE, "Expires: Tue Nov 14 23:13:20 2023")
    assert freshness_lifetime(headers, None) == 3600.0


def test_the_dates_in_these_tests_are_what_they_claim() -> None:
    assert http_date(T0) == "Tue, 14 Nov 2023 22:13:20 GMT"


# -- age (RFC 9111 4.2.3) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "request_time", "response_time", "now", "age"),
    [
        # Just stored, then resident for 100 s.
        ((DATE,), T0, T0, T0 + 100, 100.0),
        # Age from upstream plus the response delay, plus resident time.
        ((DATE, "Age: 60"), T0 - 2, T0, T0 + 10, 72.0),
        # Apparent age (Date older than receipt) beats a smaller corrected Age.
        ((f"Date: {http_date(T0 - 30)}", "Age: 10"), T0 - 1, T0, T0 + 5, 35.0),
        # A corrected Age beats a smaller apparent age.
        ((f"Date: {http_date(T0 - 30)}", "Age: 100"), T0 - 1, T0, T0, 101.0),
        # Date in the future (skewed origin clock): apparent age is 0.
        ((f"Date: {http_date(T0 + 600)}",), T0, T0, T0 + 1, 1.0),
        # No Date: the response time stands in for it.
        ((), T0 - 3, T0, T0 + 7, 10.0),
        # An invalid Age is ignored.
        ((DATE, "Age: soon"), T0, T0, T0 + 4, 4.0),
        ((DATE, "Age: -50"), T0, T0, T0 + 4, 4.0),
    ],
)
def test_current_age_follows_rfc_9111(
    lines: tuple[str, ...], request_time: float, response_time: float, now: float, age: float
) -> None:
    assert current_age(fields(*lines), request_time, response_time, now) == age


# -- revalidation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "wanted"),
    [
        ((), False),
        (("Cache-Control: no-cache",), True),
        (("Cache-Control: max-age=0",), True),
        (('Cache-Control: max-age="0"',), True),
        (("Cache-Control: max-age=0, no-transform",), True),
        (("Cache-Control: max-age=60",), False),
        (("Cache-Control: only-if-cached",), False),
        (("Pragma: no-cache",), True),
        (("Pragma: No-Cache",), True),
        (("Pragma: no-cache", "Cache-Control: max-age=60"), False),
        (("Pragma: x-custom",), False),
    ],
)
def test_client_requests_for_revalidation(lines: tuple[str, ...], wanted: bool) -> None:
    assert client_wants_revalidation(fields(*lines)) is wanted


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (('ETag: "v1"', "Content-Type: text/html"), ('If-None-Match: "v1"',)),
        (('ETag: W/"v1"',), ('If-None-Match: W/"v1"',)),
        (
            ("Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT",),
            ("If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT",),
        ),
        (
            ("Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT", 'ETag: "v1"'),
            ('If-None-Match: "v1"', "If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT"),
        ),
        (("Content-Type: text/html",), ()),
    ],
)
def test_revalidation_sends_the_stored_validators(
    stored: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    assert conditional_headers(fields(*stored)) == fields(*expected)


def test_the_clients_own_validators_and_range_are_not_sent_upstream() -> None:
    client = fields(
        "Accept: text/html",
        'If-None-Match: "mine"',
        f"If-Modified-Since: {http_date(T0)}",
        'IF-MATCH: "x"',
        f"If-Unmodified-Since: {http_date(T0)}",
        'If-Range: "mine"',
        "Range: bytes=0-9",
        "Authorization: Bearer t",
    )
    assert without_conditionals(client) == fields("Accept: text/html", "Authorization: Bearer t")


def test_a_304_updates_the_stored_head_but_not_its_body_fields() -> None:
    stored = fields(
        f"Date: {http_date(T0)}",
        "Content-Type: text/html",
        "Content-Length: 1234",
        "Content-Encoding: gzip",
        'ETag: "v1"',
        "Cache-Control: max-age=60",
        "Link: <a>",
        "Link: <b>",
    )
    fresh = fields(
        f"Date: {http_date(T0 + 100)}",
        "cache-control: max-age=120",
        "Content-Length: 0",
        "Content-Encoding: identity",
        "Link: <c>",
        "X-Served-By: edge",
    )
    merged = merge_not_modified(stored, fresh)
    assert sorted((k.lower(), v) for k, v in merged) == sorted(
        [
            (b"date", http_date(T0 + 100).encode()),
            (b"content-type", b"text/html"),
            (b"content-length", b"1234"),
            (b"content-encoding", b"gzip"),
            (b"etag", b'"v1"'),
            (b"cache-control", b"max-age=120"),
            (b"link", b"<c>"),
            (b"x-served-by", b"edge"),
        ]
    )


# -- the client's own conditions --------------------------------------------------------------

STORED = fields(
    'ETag: "v1"',
    f"Last-Modified: {http_date(T0 - DAY)}",
    "Content-Type: text/html",
)


@pytest.mark.parametrize(
    ("request_lines", "stored", "not_modified"),
    [
        (('If-None-Match: "v1"',), STORED, True),
        (('If-None-Match: W/"v1"',), STORED, True),  # weak comparison
        (('If-None-Match: "v1"',), fields('ETag: W/"v1"'), True),
        (('If-None-Match: "v0", "v1"',), STORED, True),
        (('If-None-Match: "v0",W/"v1"',), STORED, True),
        (('If-None-Match: "v0"',), STORED, False),
        (('If-None-Match: "v1-gzip"',), STORED, False),
        (("If-None-Match: *",), STORED, True),
        (('If-None-Match: "v1"',), fields(f"Last-Modified: {http_date(T0)}"), False),
        # If-None-Match present: If-Modified-Since is ignored (RFC 9110 13.1.3).
        (('If-None-Match: "v0"', f"If-Modified-Since: {http_date(T0)}"), STORED, False),
        ((f"If-Modified-Since: {http_date(T0 - DAY)}",), STORED, True),
        ((f"If-Modified-Since: {http_date(T0)}",), STORED, True),
        ((f"If-Modified-Since: {http_date(T0 - DAY - 1)}",), STORED, False),
        (("If-Modified-Since: yesterday",), STORED, False),
        ((f"If-Modified-Since: {http_date(T0)}",), fields('ETag: "v1"'), False),
        ((), STORED, False),
    ],
)
def test_the_clients_conditionals_are_answered_from_the_stored_head(
    request_lines: tuple[str, ...], stored: Headers, not_modified: bool
) -> None:
    assert not_modified_for_client(fields(*request_lines), stored) is not_modified


def test_if_none_match_star_matches_a_stored_response_without_an_etag() -> None:
    stored = fields(f"Last-Modified: {http_date(T0)}")
    assert not_modified_for_client(fields("If-None-Match: *"), stored)


def test_a_304_for_the_client_carries_validators_and_freshness_but_no_body_fields() -> None:
    stored = fields(
        DATE,
        'ETag: "v1"',
        "Content-Type: text/html",
        "Content-Length: 10",
        "Cache-Control: max-age=60",
        "Vary: Accept",
        f"Expires: {http_date(T0 + 60)}",
        f"Last-Modified: {http_date(T0 - DAY)}",
    )
    assert {k.lower() for k, _ in not_modified_headers(stored)} == {
        b"date",
        b"etag",
        b"cache-control",
        b"vary",
        b"expires",
        b"last-modified",
    }


# -- ranges -----------------------------------------------------------------------------------

RANGE_STORED = fields('ETag: "strong"', f"Last-Modified: {http_date(T0 - DAY)}")


@pytest.mark.parametrize(
    ("request_lines", "size", "span"),
    [
        ((), 1000, None),
        (("Range: bytes=0-99",), 1000, (0, 99)),
        (("Range: bytes=0-0",), 1000, (0, 0)),
        (("Range: bytes=500-",), 1000, (500, 999)),
        (("Range: bytes=999-",), 1000, (999, 999)),
        (("Range: bytes=900-5000",), 1000, (900, 999)),
        (("Range: bytes=-100",), 1000, (900, 999)),
        (("Range: bytes=-5000",), 1000, (0, 999)),
        (("Range: Bytes = 10-19",), 1000, (10, 19)),
        # Answered whole: several ranges, other units, invalid specs.
        (("Range: bytes=0-9,20-29",), 1000, None),
        (("Range: items=0-9",), 1000, None),
        (("Range: bytes=9-5",), 1000, None),
        (("Range: bytes=-",), 1000, None),
        (("Range: bytes=a-b",), 1000, None),
        (("Range: bytes=5-b",), 1000, None),
        (("Range: bytes",), 1000, None),
        # If-Range: a strong ETag match, or the exact Last-Modified date.
        (('If-Range: "strong"', "Range: bytes=0-9"), 1000, (0, 9)),
        (('If-Range: "other"', "Range: bytes=0-9"), 1000, None),
        (('If-Range: W/"strong"', "Range: bytes=0-9"), 1000, None),
        ((f"If-Range: {http_date(T0 - DAY)}", "Range: bytes=0-9"), 1000, (0, 9)),
        ((f"If-Range: {http_date(T0)}", "Range: bytes=0-9"), 1000, None),
    ],
)
def test_a_single_byte_range_is_served_and_anything_else_whole(
    request_lines: tuple[str, ...], size: int, span: tuple[int, int] | None
) -> None:
    assert parse_range(fields(*request_lines), RANGE_STORED, size) == span


@pytest.mark.parametrize(
    ("stored", "if_range"),
    [
        (fields('ETag: W/"weak"'), 'W/"weak"'),
        (fields('ETag: W/"weak"'), '"weak"'),
        ([], '"strong"'),
        ([], http_date(T0)),
    ],
)
def test_if_range_without_a_strong_match_gets_the_whole_body(
    stored: Headers, if_range: str
) -> None:
    request = fields(f"If-Range: {if_range}", "Range: bytes=0-9")
    assert parse_range(request, stored, 1000) is None


@pytest.mark.parametrize(
    ("range_value", "size"),
    [
        ("bytes=1000-", 1000),
        ("bytes=1000-2000", 1000),
        ("bytes=-0", 1000),
        ("bytes=0-", 0),
        ("bytes=-10", 0),
    ],
)
def test_a_range_past_the_end_is_unsatisfiable(range_value: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(fields(f"Range: {range_value}"), RANGE_STORED, size)


@pytest.mark.parametrize("range_value", ["bytes=x-5", "bytes=1.5-3"])
def test_a_range_with_a_non_numeric_start_is_ignored(range_value: str) -> None:
    assert parse_range(fields(f"Range: {range_value}"), RANGE_STORED, 1000) is None


# -- Cache-Status (RFC 9211) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (cache_status(None), b"transcache; hit"),
        (cache_status(None, detail="offline"), b"transcache; hit; detail=offline"),
        (
            cache_status(Fwd.MISS, fwd_status=200, stored=True),
            b"transcache; fwd=miss; fwd-status=200; stored",
        ),
        (
            cache_status(Fwd.MISS, fwd_status=200, stored=True, collapsed=True),
            b"transcache; fwd=miss; fwd-status=200; stored; collapsed",
        ),
        (cache_status(Fwd.STALE, fwd_status=304), b"transcache; fwd=stale; fwd-status=304"),
        (
            cache_status(Fwd.STALE, detail="upstream-unreachable"),
            b'transcache; fwd=stale; detail="upstream-unreachable"',
        ),
        (
            cache_status(Fwd.MISS, fwd_status=404, detail="set-cookie"),
            b'transcache; fwd=miss; fwd-status=404; detail="set-cookie"',
        ),
        (cache_status(Fwd.BYPASS, detail=None), b"transcache; fwd=bypass"),
        (cache_status(Fwd.METHOD), b"transcache; fwd=method"),
    ],
)
def test_cache_status_names_transcache_and_what_happened(member: bytes, expected: bytes) -> None:
    assert member == expected
