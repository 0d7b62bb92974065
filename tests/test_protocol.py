"""Request targets, authorities and the headers a proxy drops or adds (pure, no sockets)."""

from __future__ import annotations

import pytest

from transcache._errors import BadRequestError
from transcache._protocol import (
    Origin,
    parse_authority,
    parse_target,
    request_headers_for_upstream,
    response_headers_for_client,
)


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        (b"files.test:443", ("files.test", 443)),
        (b"Files.TEST:8443", ("files.test", 8443)),
        (b"127.0.0.1:443", ("127.0.0.1", 443)),
        (b"[::1]:443", ("::1", 443)),
        (b"[2001:DB8::1]:8080", ("2001:db8::1", 8080)),
    ],
)
def test_connect_authority_is_split_into_host_and_port(
    authority: bytes, expected: tuple[str, int]
) -> None:
    assert parse_authority(authority) == expected


@pytest.mark.parametrize(
    "authority",
    [
        b"files.test",  # CONNECT needs a port
        b"files.test:0",
        b"files.test:65536",
        b"files.test:https",
        b"[::1:443",
        b"[not-v6]:443",
        b"bad host:443",
        b"../etc:443",
        b"a..b:443",
        b":443",
        "caf\u00e9.test:443".encode(),
    ],
)
def test_malformed_authority_is_a_bad_request(authority: bytes) -> None:
    with pytest.raises(BadRequestError):
        parse_authority(authority)


def test_absolute_form_names_its_origin_with_default_port() -> None:
    target = parse_target(b"http://files.test/a/b?x=1")
    assert target.origin == Origin("http", "files.test", 80)
    assert target.path == "/a/b?x=1"


def test_absolute_form_without_path_targets_root() -> None:
    target = parse_target(b"https://files.test:8443")
    assert target.origin == Origin("https", "files.test", 8443)
    assert target.path == "/"


def test_origin_form_has_no_origin() -> None:
    target = parse_target(b"/healthz?verbose=1")
    assert target.origin is None
    assert target.path == "/healthz?verbose=1"


@pytest.mark.parametrize(
    "target",
    [
        b"ftp://files.test/x",
        b"http:///x",
        b"http://user:pw@files.test/",
        b"files.test",
        b"http://[::1/",
        b"http://[::1]x/",
        b"https://[zz::1]:443/",
        b"http://files.test:80:80/",
    ],
)
def test_unsupported_targets_are_bad_requests(target: bytes) -> None:
    with pytest.raises(BadRequestError):
        parse_target(target)


@pytest.mark.parametrize(
    ("origin", "authority"),
    [
        (Origin("https", "files.test", 443), "files.test"),
        (Origin("http", "files.test", 80), "files.test"),
        (Origin("https", "files.test", 8443), "files.test:8443"),
        (Origin("http", "::1", 8080), "[::1]:8080"),
    ],
)
def test_host_header_omits_the_default_port(origin: Origin, authority: str) -> None:
    assert origin.authority == authority


def test_upstream_request_drops_hop_by_hop_and_proxy_credentials() -> None:
    headers = [
        (b"Host", b"elsewhere.test"),
        (b"Proxy-Authorization", b"Basic c2VjcmV0"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"dropped because Connection names it"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Expect", b"100-continue"),
        (b"Accept", b"application/vnd.pypi.simple.v1+json"),
        (b"Authorization", b"Bearer token"),
        (b"Content-Length", b"3"),
    ]
    out = request_headers_for_upstream(headers, Origin("https", "files.test", 8443))
    assert out == [
        (b"Host", b"files.test:8443"),
        (b"Accept", b"application/vnd.pypi.simple.v1+json"),
        (b"Authorization", b"Bearer token"),
        (b"Content-Length", b"3"),
        (b"Via", b"1.1 transcache"),
    ]


def test_chunked_request_stays_chunked_upstream() -> None:
    headers = [(b"Host", b"files.test"), (b"Transfer-Encoding", b"chunked")]
    out = request_headers_for_upstream(headers, Origin("https", "files.test", 443))
    assert (b"Transfer-Encoding", b"chunked") in out


def test_content_length_beside_transfer_encoding_is_never_forwarded() -> None:
    # RFC 9112 6.3: Transfer-Encoding overrides Content-Length; a proxy must drop the latter,
    # or the next hop may frame the body differently from us (request smuggling).
    headers = [
        (b"Host", b"files.test"),
        (b"Content-Length", b"5"),
        (b"Transfer-Encoding", b"chunked"),
    ]
    out = request_headers_for_upstream(headers, Origin("https", "files.test", 443))
    names = [name.lower() for name, _ in out]
    assert b"content-length" not in names
    assert (b"Transfer-Encoding", b"chunked") in out


def test_response_keeps_end_to_end_headers_and_adds_via() -> None:
    headers = [
        (b"Content-Type", b"application/octet-stream"),
        (b"Connection", b"close"),
        (b"Transfer-Encoding", b"chunked"),
        (b"ETag", b'"abc"'),
    ]
    assert response_headers_for_client(headers) == [
        (b"Content-Type", b"application/octet-stream"),
        (b"ETag", b'"abc"'),
        (b"Transfer-Encoding", b"chunked"),
        (b"Via", b"1.1 transcache"),
    ]
