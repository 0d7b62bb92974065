"""Fuzzed request heads and bodies, sent raw over TCP and inside an intercepted tunnel: every
answer is a well-formed HTTP response or a clean close, nothing reaches the log as a
traceback, a normal request still succeeds afterwards, and the proxy's open file descriptors
return to where they were.

The CI run is derandomized and small; `pytest -m fuzz` runs thousands of random cases.
Targets name only the test origins' resolved names and ports (or cannot be parsed at all), so
no fuzzed request makes the proxy look up or reach anything beyond loopback.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import resolve_names
from .origin import Origin, issue_origin_cert
from .proxyproc import ProxyProcess

CI_EXAMPLES = 400
LONG_EXAMPLES = 3000
READ_TIMEOUT = 20.0
FD_SETTLE_SECONDS = 15.0
STATUS_LINE = re.compile(rb"^HTTP/1\.1 [1-5]\d\d [^\r\n]*$")
HEADER_LINE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+: ?[^\r\n]*$")


@dataclass
class Rig:
    proxy: ProxyProcess
    tls_port: int
    plain_port: int
    client_context: ssl.SSLContext


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    ca = trustme.CA()
    ca_pem = tmp_path_factory.mktemp("fuzz-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    with (
        Origin.start(issue_origin_cert(ca)) as tls_origin,
        Origin.start() as plain_origin,
    ):
        tls_origin.add_file("/file.bin", b"stored body\n")
        plain_origin.add_file("/file.bin", b"stored body\n")
        workdir = tmp_path_factory.mktemp("fuzz-proxy")
        with ProxyProcess.start(
            workdir,
            upstream_ca=[ca_pem],
            resolve=resolve_names(tls_origin, plain_origin),
            args=["--header-timeout", "2"],
        ) as proxy:
            context = ssl.create_default_context(cafile=str(proxy.ca_pem))
            yield Rig(proxy, tls_origin.port, plain_origin.port, context)
            assert "Traceback" not in proxy.log, proxy.log


METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS"]
ODD_METHODS = [b"get", b"G T", b""]
FIELD_NAMES = [
    b"Content-Length",
    b"Transfer-Encoding",
    b"Expect",
    b"Connection",
    b"Authorization",
    b"Range",
    b"If-Range",
    b"If-None-Match",
    b"If-Modified-Since",
    b"Cache-Control",
    b"Proxy-Authorization",
    b"Content-Type",
    b"Content-Encoding",
    b"Git-Protocol",
    b"Upgrade",
    b"Host",
]
FIELD_VALUES = [
    b"0",
    b"5",
    b"-1",
    b"99999999999999999999",
    b"chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"100-continue",
    b"close",
    b"keep-alive, Upgrade",
    b"bytes=0-1",
    b"bytes=5-1",
    b"bytes=-3",
    b"*",
    b'"etag"',
    b"no-cache",
    b"only-if-cached",
    b"max-age=0",
    b"application/x-git-upload-pack-request",
    b"version=2",
    b"files.test",
    b"",
]
BODIES = [
    b"",
    b"hello",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"zz\r\n",
    b"0000",
    b"0014command=ls-refs\n0000",
]
FIXED_TARGETS = [
    b"/",
    b"/healthz",
    b"/ca.pem",
    b"/tls-rejections",
    b"*",
    b"http://[::1/",
    b"http://files.test:99999/",
    b"http://files.test:0/",
    b"ftp://files.test/",
    b"http://user:pw@files.test/",
    b"files.test",
    b"%00",
]
PATHS = [b"/", b"/echo", b"/file.bin", b"/file.bin?x=1", b"/git/x.git/git-upload-pack", b"/%2e%2e/"]


def request_heads(rig: Rig) -> st.SearchStrategy[bytes]:
    """Requests that are well-formed but for their field values three times in four, and
    odd in every part (methods, field names, versions, line ends, raw bytes) otherwise: most
    get past the parser into forwarding and the cache, the rest try the parser."""
    hosts = [
        f"files.test:{rig.tls_port}",
        f"index.test:{rig.tls_port}",
        f"files.test:{rig.plain_port}",
        "transcache.invalid",
    ]
    absolute = st.builds(
        lambda scheme, host, path: f"{scheme}://{host}".encode() + path,
        st.sampled_from(["https", "http", "HTTP"]),
        st.sampled_from(hosts),
        st.sampled_from(PATHS),
    )
    targets = st.one_of(
        st.sampled_from(PATHS), absolute, st.sampled_from([h.encode() for h in hosts])
    )
    odd_targets = st.one_of(
        st.sampled_from(FIXED_TARGETS), st.binary(min_size=1, max_size=30).map(b"/".__add__)
    )

    @st.composite
    def requests(draw: st.DrawFn) -> bytes:
        odd = draw(st.integers(0, 3)) == 0

        def pick(usual: st.SearchStrategy[bytes], unusual: st.SearchStrategy[bytes]) -> bytes:
            return draw(st.one_of(usual, unusual) if odd else usual)

        if odd and draw(st.booleans()):
            return draw(st.binary(max_size=200))
        method = pick(
            st.sampled_from(METHODS), st.sampled_from(ODD_METHODS) | st.binary(max_size=8)
        )
        target = pick(targets, odd_targets)
        version = pick(
            st.just(b"HTTP/1.1"), st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b""])
        )
        nl = pick(st.just(b"\r\n"), st.just(b"\n"))
        fields = [(b"Host", b"files.test")] if not odd or draw(st.booleans()) else []
        for _ in range(draw(st.integers(0, 4))):
            name = pick(st.sampled_from(FIELD_NAMES), st.binary(max_size=12))
            value = pick(st.sampled_from(FIELD_VALUES), st.binary(max_size=30))
            fields.append((name, value))
        body = pick(st.sampled_from(BODIES), st.binary(max_size=64))
        head = method + b" " + target + b" " + version + nl
        head += b"".join(name + b": " + value + nl for name, value in fields)
        return head + nl + body

    return requests()


def check_answer(data: bytes) -> None:
    """A clean close (nothing) or HTTP/1.1 responses with well-formed heads."""
    if not data:
        return
    head, sep, _ = data.partition(b"\r\n\r\n")
    assert sep, f"response head never ended: {data[:300]!r}"
    status_line, *fields = head.split(b"\r\n")
    assert STATUS_LINE.match(status_line), status_line
    for field in fields:
        assert HEADER_LINE.match(field), field


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def send_raw(rig: Rig, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", rig.proxy.port), timeout=READ_TIMEOUT) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return read_until_closed(sock)
        except ConnectionResetError:
            return b""  # closed with input unread: a clean (if abrupt) close


def send_in_tunnel(rig: Rig, data: bytes) -> bytes:
    """`data` inside an intercepted tunnel, then a half-close; the decrypted answer."""
    with socket.create_connection(("127.0.0.1", rig.proxy.port), timeout=READ_TIMEOUT) as sock:
        sock.sendall(f"CONNECT files.test:{rig.tls_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = rig.client_context.wrap_bio(incoming, outgoing, server_hostname="files.test")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        if data:
            tls.write(data)
        try:
            sock.sendall(outgoing.read())
            sock.shutdown(socket.SHUT_WR)  # TCP EOF without close_notify: the client is gone
        except (BrokenPipeError, ConnectionResetError):
            return b""
        answer = []
        while True:
            try:
                received = sock.recv(65536)
            except ConnectionResetError:
                break
            if not received:
                break
            incoming.write(received)
            while True:
                try:
                    answer.append(tls.read(65536))
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
        return b"".join(answer)


def open_fds(rig: Rig) -> int:
    """The proxy's open file descriptors, less its pooled connections to the origins (kept
    idle for reuse by design, up to a minute)."""
    fd_dir = f"/proc/{rig.proxy.process.pid}/fd"
    links = []
    for fd in os.listdir(fd_dir):
        try:
            links.append(os.readlink(f"{fd_dir}/{fd}"))
        except FileNotFoundError:
            pass  # closed while we looked
    origin_ports = {f":{port:04X}" for port in (rig.tls_port, rig.plain_port)}
    upstream = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{rig.proxy.process.pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[2][-5:] in origin_ports:
                upstream.add(f"socket:[{fields[9]}]")
    return sum(link not in upstream for link in links)


def assert_normal_requests_work(rig: Rig) -> None:
    plain = f"GET http://files.test:{rig.plain_port}/file.bin HTTP/1.1\r\nHost: x\r\n\r\n"
    assert send_raw(rig, plain.encode()).endswith(b"\r\n\r\nstored body\n")
    inside = b"GET /file.bin HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n"
    assert send_in_tunnel(rig, inside).endswith(b"\r\n\r\nstored body\n")


def fuzz(rig: Rig, examples: int, *, derandomize: bool) -> None:
    assert_normal_requests_work(rig)  # warms the upstream pool: part of the baseline
    baseline = open_fds(rig)

    @settings(
        max_examples=examples,
        derandomize=derandomize,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=request_heads(rig), tunnelled=st.booleans())
    def one(request: bytes, tunnelled: bool) -> None:
        logged = rig.proxy.log_path.stat().st_size
        check_answer(send_in_tunnel(rig, request) if tunnelled else send_raw(rig, request))
        # The proxy logs a failure before it closes the connection: this example's lines.
        with rig.proxy.log_path.open("rb") as log:
            log.seek(logged)
            new_lines = log.read().decode(errors="replace")
        assert "Traceback" not in new_lines, new_lines

    one()
    assert_normal_requests_work(rig)
    deadline = time.monotonic() + FD_SETTLE_SECONDS
    while open_fds(rig) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds(rig) <= baseline


def test_fuzzed_requests_get_well_formed_answers(rig: Rig) -> None:
    fuzz(rig, CI_EXAMPLES, derandomize=True)


@pytest.mark.fuzz
def test_fuzzed_requests_long_run(rig: Rig) -> None:
    fuzz(rig, LONG_EXAMPLES, derandomize=False)
