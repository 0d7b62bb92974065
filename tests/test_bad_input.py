"""Bad input gets a clear status and never stops the proxy serving: malformed requests 400,
oversized heads 431, CONNECT outside the port allow-list 403, slow heads 408, and clients that
vanish mid-way leave no connection behind."""

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


@pytest.mark.parametrize(
    "request_head",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET http://files.test:99999/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ftp://files.test/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://[::1/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT files.test HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT bad_host!:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n",  # TLS hello
    ],
)
def test_malformed_request_is_400(strict_proxy: ProxyProcess, request_head: bytes) -> None:
    response = exchange(strict_proxy, request_head)
    assert status_of(response) == 400
    assert b"Content-Type: text/plain" in response
    assert b"transcache: " in response
    assert_still_serving(strict_proxy)


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


def test_connect_to_a_port_outside_the_allow_list_is_403(strict_proxy: ProxyProcess) -> None:
    response = exchange(strict_proxy, b"CONNECT files.test:25 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 403
    assert b"port 25 is not allowed" in response
    assert_still_serving(strict_proxy)


def test_slow_request_head_times_out_with_408(strict_proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict_proxy.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        response = read_all(sock)
    assert status_of(response) == 408
    assert_still_serving(strict_proxy)


def test_silent_client_is_disconnected(strict_proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict_proxy.port), timeout=30) as sock:
        assert read_all(sock) == b""  # closed by the proxy after the header timeout


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
