"""mitmproxy addon for the benchmarks: every `.test` host is reached at 127.0.0.1 (mitmproxy
has no resolve override; the name still goes out as SNI and is verified)."""

from __future__ import annotations

from typing import Any

LOOPBACK = "127.0.0.1"


def server_connect(data: Any) -> None:
    host, port = data.server.address
    if isinstance(host, str) and host.endswith(".test"):
        data.server.sni = data.server.sni or host
        data.server.address = (LOOPBACK, port)
