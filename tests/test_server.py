"""The server's connection handling over in-memory streams (no sockets): pipelining,
keep-alive, and what a CONNECT leaves in the buffer."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from transcache._ca import CertificateAuthority
from transcache._config import Config
from transcache._server import ProxyServer


def make_server(tmp_path: Path) -> ProxyServer:
    config = Config(ca_dir=tmp_path / "ca", cache_dir=tmp_path / "cache", header_timeout=5)
    return ProxyServer(config, CertificateAuthority.load_or_create(config.ca_dir))


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    client, proxy_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, proxy_side)
        await client.send_all(
            b"GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n"
            b"GET /ca.pem HTTP/1.1\r\nHost: p\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        )
        response = await read_until_closed(client)
    assert response.count(b"HTTP/1.1 200 ") == 3
    first, second = response.index(b"ok\n"), response.index(b"-----BEGIN CERTIFICATE-----")
    assert first < second < response.rindex(b"ok\n")


async def test_request_fed_one_byte_at_a_time_is_understood(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    client, proxy_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, proxy_side)
        for byte in b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n":
            await client.send_all(bytes([byte]))
        response = await read_until_closed(client)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(b"\r\n\r\nok\n")


async def test_unsupported_method_on_the_proxy_itself_is_405(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    client, proxy_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, proxy_side)
        await client.send_all(b"DELETE /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        response = await read_until_closed(client)
    assert response.startswith(b"HTTP/1.1 405 ")
