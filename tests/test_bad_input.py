"""Bad input over real sockets: an oversized head gets its 431 even while the client is still
sending, and clients that vanish mid-way leave no connection behind. Malformed requests (400),
CONNECT outside the port allow-list (403) and slow or silent clients (408, closed) are tested
in process, in test_connection.py."""

from __future__ import annotations

import os
import socket
import ssl

import pytest

from .conftest import StartProxy
from .origin import Origin
from .proxyproc import ProxyProcess

HEADER_TIMEOUT = 1.0


@pytest.fixture
def strict_proxy(start_proxy: StartProxy, origin: Origin) -> ProxyProcess:
    return start_proxy(origin, args=["--header-timeout", str(HEADER_TIMEOUT)])


def exchange(proxy: ProxyProcess, data: bytes) -> bytes:
    """Send `data` on a fresh connection and read until the proxy closes it."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(data)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def open_fds(proxy: ProxyProcess) -> int:
    return len(os.listdir(f"/proc/{proxy.process.pid}/fd"))


def assert_still_serving(proxy: ProxyProcess) -> None:
    response = exchange(proxy, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200
    assert response.endswith(b"ok\n")


def test_oversized_request_head_is_431(strict_proxy: ProxyProcess) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", strict_proxy.port), timeout=30) as sock:
        try:
            sock.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy answered and closed before reading it all
        response = read_all(sock)
    assert status_of(response) == 431
    assert_still_serving(strict_proxy)


def test_vanishing_clients_leave_no_connection_behind(
    strict_proxy: ProxyProcess, origin: Origin
) -> None:
    assert_still_serving(strict_proxy)
    baseline = open_fds(strict_proxy)
    tunnel = f"CONNECT files.test:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    for data in [
        b"GET /healthz HTTP/1.1\r\nHo",  # half a head
        tunnel,  # a tunnel, then nothing
        tunnel + b"not a TLS handshake\r\n\r\n",
        b"POST http://files.test:1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab",
    ]:
        sock = socket.create_connection(("127.0.0.1", strict_proxy.port), timeout=30)
        sock.sendall(data)
        sock.close()
    # A TLS client that gives up half-way through the handshake.
    raw = socket.create_connection(("127.0.0.1", strict_proxy.port), timeout=30)
    raw.sendall(tunnel)
    assert status_of(raw.recv(4096)) == 200
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="files.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    raw.sendall(outgoing.read()[:50])
    raw.close()
    # Every one of those connections times out or ends; the proxy is back at its baseline.
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", strict_proxy.port), timeout=30) as sock:
            assert read_all(sock) == b""  # waits out one header timeout
        if open_fds(strict_proxy) <= baseline:
            break
    assert open_fds(strict_proxy) <= baseline
    assert_still_serving(strict_proxy)
