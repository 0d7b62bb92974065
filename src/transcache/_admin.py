"""The proxy's own pages, by path: served to origin-form requests (``GET /healthz``) and to
requests for ADMIN_HOST, directly or through CONNECT (which then needs our CA: a trust check).

`AdminPages` is a registry. The server registers the core pages (`core_pages`); a feature
registers its own through whoever assembles the proxy (`api.open_proxy` registers install's
doctor pages), so the core imports no feature package. A page is a function of nothing that
returns (status, content type, body), evaluated per request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import h11

from ._access import Exchange
from ._connection import TEXT_PLAIN, Client
from ._errors import MethodNotAllowedError
from ._rejections import LeafRejections

# A name that never resolves (RFC 6761 .invalid): a client reaches it only through the proxy,
# which answers it itself, so fetching https://transcache.invalid/healthz proves a client
# uses the proxy and trusts its CA.
ADMIN_HOST = "transcache.invalid"
ADMIN_METHODS = frozenset({b"GET", b"HEAD"})
APPLICATION_JSON = b"application/json"
HEALTH_PAGE = "/healthz"
CA_PAGE = "/ca.pem"
# Clients that rejected our leaf, per host, as JSON (read by `status` and `doctor`).
REJECTIONS_PAGE = "/tls-rejections"

# An admin page: () -> (status, content type, body).
AdminPage = Callable[[], tuple[int, bytes, bytes]]


def core_pages(ca_pem: bytes, rejections: LeafRejections) -> dict[str, AdminPage]:
    return {
        HEALTH_PAGE: lambda: (200, TEXT_PLAIN, b"ok\n"),
        CA_PAGE: lambda: (200, b"application/x-pem-file", ca_pem),
        REJECTIONS_PAGE: lambda: (200, APPLICATION_JSON, json.dumps(rejections.to_json()).encode()),
    }


class AdminPages:
    def __init__(self) -> None:
        self._pages: dict[str, AdminPage] = {}

    def register(self, pages: Mapping[str, AdminPage]) -> None:
        """Serve `pages` from now on; a path has one owner (ValueError when taken)."""
        taken = self._pages.keys() & pages.keys()
        if taken:
            raise ValueError(f"admin pages registered twice: {', '.join(sorted(taken))}")
        self._pages.update(pages)

    async def serve(
        self, client: Client, request: h11.Request, path: str, exchange: Exchange
    ) -> None:
        await client.body_reader()()
        if request.method not in ADMIN_METHODS:
            raise MethodNotAllowedError(f"{exchange.method} is not supported here")
        page = self._pages.get(path.partition("?")[0])
        if page is None:
            body = f"transcache: no page {path!r}; try {HEALTH_PAGE} or {CA_PAGE}\n".encode()
            await client.answer(exchange, 404, body, TEXT_PLAIN)
            return
        status, content_type, body = page()
        await client.answer(exchange, status, body, content_type)
