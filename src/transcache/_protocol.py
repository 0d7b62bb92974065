"""Sans-IO HTTP proxy rules: request-target forms, authorities, and the headers a proxy must
drop or add when it forwards a message (RFC 9110 section 7.6, RFC 9112 section 3.2).

Nothing here does I/O or imports trio. Header lists are h11's shape: a list of
``(name, value)`` byte pairs; names keep the sender's case and are compared lowercased.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ._errors import BadRequestError

Headers = list[tuple[bytes, bytes]]

VIA = b"1.1 transcache"
DEFAULT_PORTS = {"http": 80, "https": 443}

# Connection-specific fields (RFC 9110 7.6.1) plus the de-facto Proxy-Connection.
# Transfer-Encoding is re-applied by h11 on each hop; Expect is answered by us.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)

_HOST_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?$")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request goes: the (scheme, host, port) triple that keys the upstream pool."""

    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        """The Host header value: port omitted when it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if DEFAULT_PORTS.get(self.scheme) == self.port:
            return host
        return f"{host}:{self.port}"

    def url(self, target: str) -> str:
        return f"{self.scheme}://{self.authority}{target}"


def validate_host(host: str) -> str:
    """Return `host` lowercased if it is a DNS name or an IP literal, else raise."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOST_NAME.match(host) or ".." in host:
        raise BadRequestError(f"invalid host name {host!r}")
    return host.lower().rstrip(".")


def parse_authority(authority: bytes, *, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port``) as found in a CONNECT target or a Host header."""
    try:
        text = authority.decode("ascii")
    except UnicodeDecodeError as exc:
        raise BadRequestError("non-ASCII authority") from exc
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BadRequestError(f"malformed authority {text!r}")
        port_text = rest[1:] if rest else ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise BadRequestError(f"malformed IPv6 address {host!r}") from exc
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not port_text:
        if default_port is None:
            raise BadRequestError(f"authority {text!r} has no port")
        return validate_host(host), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRequestError(f"invalid port in {text!r}")
    return validate_host(host), int(port_text)


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed request-target: absolute-form gives an origin; origin-form does not."""

    origin: Origin | None
    path: str  # path and query, always starting with "/" (or "*")


def parse_target(target: bytes) -> Target:
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError as exc:
        raise BadRequestError("non-ASCII request target") from exc
    if text.startswith("/") or text == "*":
        return Target(None, text)
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # an unbalanced "[" in the authority, for one
        raise BadRequestError(f"malformed request target {text[:200]!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.netloc:
        raise BadRequestError(f"unsupported request target {text[:200]!r}")
    if "@" in parts.netloc:
        raise BadRequestError("credentials in the request target are not supported")
    host, port = parse_authority(parts.netloc.encode(), default_port=DEFAULT_PORTS[scheme])
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(Origin(scheme, host, port), path)


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of `name` (lowercase), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def drop_connection_fields(headers: Headers) -> Headers:
    listed = set(HOP_BY_HOP)
    for key, value in headers:
        if key.lower() == b"connection":
            listed.update(token.strip().lower() for token in value.split(b","))
    return [(k, v) for k, v in headers if k.lower() not in listed]


def _append_via(headers: Headers) -> Headers:
    return [*headers, (b"Via", VIA)]


def request_headers_for_upstream(headers: Headers, origin: Origin) -> Headers:
    """Headers to send upstream: connection fields dropped, Host rewritten to the origin
    (RFC 9112 3.2.2: an absolute-form target wins over a Host header), Via added, and the
    body framing the client used carried over (h11 re-frames it on the new hop).

    A chunked body's Content-Length is dropped (RFC 9112 6.3: Transfer-Encoding wins, and a
    proxy must not forward both, or the next hop may frame the body differently)."""
    framing: Headers = []
    dropped = {b"host"}
    if header_value(headers, b"transfer-encoding") is not None:
        framing = [(b"Transfer-Encoding", b"chunked")]
        dropped.add(b"content-length")
    kept = [(k, v) for k, v in drop_connection_fields(headers) if k.lower() not in dropped]
    return _append_via([(b"Host", origin.authority.encode()), *kept, *framing])


def response_headers_for_client(headers: Headers) -> Headers:
    """Headers to send to the client: connection fields dropped, framing kept, Via added."""
    framing: Headers = []
    if header_value(headers, b"content-length") is None and (
        header_value(headers, b"transfer-encoding") is not None
    ):
        framing = [(b"Transfer-Encoding", b"chunked")]
    return _append_via([*drop_connection_fields(headers), *framing])
