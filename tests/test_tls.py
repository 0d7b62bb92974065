"""TLS on both sides: upstream verification failures are 502s that say why, passthrough hosts
show the origin's own certificate, a client that rejects our leaf is told how to trust it
without changing what other clients get, and our leaves satisfy strict X.509 checks."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from transcache._rejections import program_name
from transcache.install.doctor import rejection_findings
from transcache.install.health import leaf_rejections

from .clients import curl
from .conftest import StartProxy
from .origin import Origin, client_env, issue_untrusted_cert
from .proxyproc import ProxyProcess


@pytest.fixture
def untrusted_origin() -> Iterator[Origin]:
    with Origin.start(issue_untrusted_cert("untrusted.test")) as server:
        yield server


def test_untrusted_origin_is_a_502_naming_the_verification_error(
    untrusted_origin: Origin, start_proxy: StartProxy, home: Path
) -> None:
    proxy = start_proxy(args=["--resolve", f"untrusted.test:{untrusted_origin.port}:127.0.0.1"])
    result = curl(
        client_env(home, proxy.env()),
        "--write-out",
        "\n%{http_code}",
        untrusted_origin.url("untrusted.test", "/echo"),
    )
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "502"
    assert "TLS verification failed for untrusted.test" in body
    assert "unable to get local issuer certificate" in body
    assert untrusted_origin.requests == []


def test_refused_upstream_connection_is_a_502(start_proxy: StartProxy, home: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    proxy = start_proxy(args=["--resolve", f"down.test:{port}:127.0.0.1"])
    result = curl(
        client_env(home, proxy.env()),
        "--write-out",
        "\n%{http_code}",
        f"https://down.test:{port}/",
    )
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "502"
    assert f"cannot connect to down.test:{port}" in body


def test_silent_upstream_is_a_504(start_proxy: StartProxy, home: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts into the backlog, never answers
        port = silent.getsockname()[1]
        proxy = start_proxy(
            args=["--resolve", f"silent.test:{port}:127.0.0.1", "--upstream-timeout", "1"]
        )
        result = curl(
            client_env(home, proxy.env()),
            "--write-out",
            "\n%{http_code}",
            f"http://silent.test:{port}/",
        )
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "504"
    assert "did not answer in time" in body


def test_passthrough_host_shows_the_origins_certificate(
    origin: Origin, start_proxy: StartProxy, origin_ca_pem: Path, home: Path
) -> None:
    origin.add_file("/p.txt", b"tunnelled\n")
    proxy = start_proxy(origin, args=["--passthrough", "*.test"])
    env = client_env(home, {"HTTPS_PROXY": proxy.url})
    # Trusting only the origin's CA works: the certificate is the origin's, not ours...
    ok = curl(env, "--cacert", str(origin_ca_pem), origin.url("files.test", "/p.txt"))
    assert ok.stdout == "tunnelled\n"
    # ...and trusting only ours fails.
    refused = curl(
        env, "--cacert", str(proxy.ca_pem), origin.url("files.test", "/p.txt"), check=False
    )
    assert refused.returncode == 60  # peer certificate cannot be authenticated
    assert proxy.log_lines(f"CONNECT files.test:{origin.port} 200")


def test_client_rejecting_our_leaf_changes_nothing_for_other_clients(
    origin: Origin, proxy: ProxyProcess, origin_ca_pem: Path, home: Path
) -> None:
    origin.add_file("/pinned.txt", b"pinned\n")
    env = client_env(home, {"HTTPS_PROXY": proxy.url})
    url = origin.url("files.test", "/pinned.txt")
    # A client that trusts its own store (here: only the origin's CA) refuses our leaf...
    for _ in range(2):
        assert curl(env, "--cacert", str(origin_ca_pem), url, check=False).returncode == 60
    # ...and is told, with its fix: once, or twice when only the second lookup in /proc
    # caught curl before it exited (then the second warning names it). The proxy counts a
    # rejection and warns in one step, so once both are counted every warning is logged.
    deadline = time.monotonic() + 10
    while leaf_rejections(proxy.url).get("files.test", {}).get("count") != 2:
        assert time.monotonic() < deadline, leaf_rejections(proxy.url)
        time.sleep(0.05)
    warnings = proxy.log_lines("rejected the transcache certificate for files.test")
    named = [warning.split(" WARNING ", 1)[1].split(" (", 1)[0] for warning in warnings]
    assert named in (["a client"], ["curl"], ["a client", "curl"]), warnings
    for warning in warnings:
        assert f"at {proxy.bundle}" in warning
        assert "CURL_CA_BUNDLE" in warning
    # The host stays intercepted for everyone.
    assert curl(env, "--cacert", str(proxy.ca_pem), url).stdout == "pinned\n"
    assert proxy.log_lines(f"GET {url} 200")
    # status and doctor read the per-host count from the proxy.
    assert leaf_rejections(proxy.url)["files.test"]["count"] == 2
    [finding] = rejection_findings(proxy.url)
    assert (finding.client, finding.ok) == ("files.test", False)
    assert "2 TLS handshake(s)" in finding.message


def test_a_rejecting_client_is_named_by_its_program(
    origin: Origin, proxy: ProxyProcess, origin_ca_pem: Path
) -> None:
    # This test's own process refuses the leaf and keeps its socket open, so the proxy can
    # find the program behind it in /proc (pytest, or an xdist worker).
    context = ssl.create_default_context(cafile=str(origin_ca_pem))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="files.test")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(f"CONNECT files.test:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        with pytest.raises(ssl.SSLCertVerificationError):
            while True:
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
        raw.sendall(outgoing.read())  # the alert
        [warning] = proxy.log_lines("rejected the transcache certificate for files.test")
    argv = [arg for arg in Path("/proc/self/cmdline").read_text().split("\0") if arg]
    ours = program_name(argv)  # pytest, say
    assert warning.split(" WARNING ", 1)[1].startswith(f"{ours} (127.0.0.1:")
    assert leaf_rejections(proxy.url)["files.test"]["clients"] == [ours]


def test_strict_x509_client_accepts_our_leaves(origin: Origin, proxy: ProxyProcess) -> None:
    origin.add_file("/strict.txt", b"strict\n")
    context = ssl.create_default_context(cafile=str(proxy.ca_pem))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    for host in ("files.test", "index.test"):
        conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=30)
        conn.set_tunnel(host, origin.port)
        try:
            conn.request("GET", "/strict.txt")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"strict\n")
            assert conn.sock is not None
            assert conn.sock.selected_alpn_protocol() in (None, "http/1.1")
        finally:
            conn.close()


def test_leaf_offers_only_http11_to_clients_asking_for_h2(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    origin.add_file("/alpn.txt", b"alpn\n")
    result = curl(
        proxied_env,
        "--http2",
        "--write-out",
        "%{http_version}",
        origin.url("files.test", "/alpn.txt"),
    )
    assert result.stdout == "alpn\n1.1"
