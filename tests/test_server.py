"""The server's connection handling over in-memory streams (no sockets): pipelining,
a request fed byte by byte, and what the proxy's own pages refuse."""

from __future__ import annotations

from pathlib import Path

from .inprocess import connected, proxy_server


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    server = proxy_server(tmp_path, header_timeout=5)
    async with connected(server.handle) as client:
        await client.send(
            b"GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n"
            b"GET /ca.pem HTTP/1.1\r\nHost: p\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        )
        response = await client.read_until_closed()
    assert response.count(b"HTTP/1.1 200 ") == 3
    first, second = response.index(b"ok\n"), response.index(b"-----BEGIN CERTIFICATE-----")
    assert first < second < response.rindex(b"ok\n")


async def test_request_fed_one_byte_at_a_time_is_understood(tmp_path: Path) -> None:
    server = proxy_server(tmp_path, header_timeout=5)
    async with connected(server.handle) as client:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n":
            await client.send(bytes([byte]))
        response = await client.read_until_closed()
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(b"\r\n\r\nok\n")


async def test_unsupported_method_on_the_proxy_itself_is_405(tmp_path: Path) -> None:
    server = proxy_server(tmp_path, header_timeout=5)
    async with connected(server.handle) as client:
        await client.send(b"DELETE /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        response = await client.read_until_closed()
    assert response.startswith(b"HTTP/1.1 405 ")
