"""TLS on both sides: upstream verification failures are 502s that say why, passthrough hosts
show the origin's own certificate, clients that reject our leaf fall back to passthrough, and
our leaves satisfy a client with strict X.509 checks."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_client_rejecting_our_leaf_makes_the_host_passthrough(
    origin: Origin, proxy: ProxyProcess, origin_ca_pem: Path, home: Path
) -> None:
    origin.add_file("/pinned.txt", b"pinned\n")
    env = client_env(home, {"HTTPS_PROXY": proxy.url})
    url = origin.url("files.test", "/pinned.txt")
    first = curl(env, "--cacert", str(origin_ca_pem), url, check=False)
    assert first.returncode == 60
    assert proxy.log_lines("rejected our certificate for files.test")
    second = curl(env, "--cacert", str(origin_ca_pem), url)
    assert second.stdout == "pinned\n"


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
