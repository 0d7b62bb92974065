"""Error types. Each carries the HTTP status it maps to, so the server turns any of them into
a response in one place (`ProxyError.status`) with a plain-text reason (`str(error)`)."""

from __future__ import annotations


class TranscacheError(Exception):
    """The root of transcache's own errors. Library code raises only these (or lets a
    programming error through as one); the CLI turns them into a message and an exit status."""


class ProxyError(TranscacheError):
    """A failure that becomes an HTTP error response to the client."""

    status: int = 500
    reason: str = "Internal Server Error"
    # Header fields the answer carries besides the reason (a challenge, say).
    headers: tuple[tuple[bytes, bytes], ...] = ()


class BadRequestError(ProxyError):
    status = 400
    reason = "Bad Request"


class UnauthorizedError(ProxyError):
    """A page of the proxy's own that needs a user's credentials (Authorization: Basic)."""

    status = 401
    reason = "Unauthorized"
    headers = ((b"WWW-Authenticate", b'Basic realm="transcache"'),)


class ProxyAuthRequiredError(ProxyError):
    """A proxy request without a user's credentials (Proxy-Authorization: Basic)."""

    status = 407
    reason = "Proxy Authentication Required"
    headers = ((b"Proxy-Authenticate", b'Basic realm="transcache"'),)


class ForbiddenError(ProxyError):
    status = 403
    reason = "Forbidden"


class MethodNotAllowedError(ProxyError):
    status = 405
    reason = "Method Not Allowed"


class RequestTimeoutError(ProxyError):
    status = 408
    reason = "Request Timeout"


class PayloadTooLargeError(ProxyError):
    status = 413
    reason = "Content Too Large"


class HeadersTooLargeError(ProxyError):
    status = 431
    reason = "Request Header Fields Too Large"


class UpstreamError(ProxyError):
    """The origin could not be reached or answered badly."""

    status = 502
    reason = "Bad Gateway"


class UpstreamUnreachableError(UpstreamError):
    """The origin could not be reached at all (refused, unresolvable, unroutable): nothing was
    exchanged with it. With a timeout, the only failure a stale copy may answer for."""


class UpstreamTLSError(UpstreamError):
    """The origin's certificate failed verification (or its TLS handshake failed)."""


class UpstreamTimeoutError(UpstreamError):
    status = 504
    reason = "Gateway Timeout"


class RevalidationRequiredError(ProxyError):
    """The origin cannot be reached and the stored copy may not be served without it
    (must-revalidate, no-cache, ...: RFC 9111 5.2.2.2 asks for a 504)."""

    status = 504
    reason = "Gateway Timeout"


class OfflineMissError(ProxyError):
    """Offline (or only-if-cached) and the response is not in the cache."""

    status = 504
    reason = "Gateway Timeout"
