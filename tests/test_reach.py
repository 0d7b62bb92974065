"""Where the proxy connects: ports by scheme and host, and never a loopback, link-local,
unspecified or own address unless `--resolve` or `--allow-destination` names it, whatever
form the request takes (absolute-form, CONNECT, inside a tunnel, passthrough). And where it
listens: loopback only until it has authentication."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from transcache import Proxy
from transcache._config import Config, ConfigError
from transcache._launch import LISTENING_PREFIX
from transcache._reach import IPAddress, address_refusal, is_loopback_host, parse_destination

from .clients import curl
from .conftest import StartProxy
from .origin import Origin, client_env
from .proxyproc import ProxyProcess
from .test_bad_input import exchange, status_of

TRANSCACHE = [sys.executable, "-m", "transcache"]


def get(proxy: ProxyProcess, url: str) -> bytes:
    """An absolute-form GET sent as is (curl would normalise `127.1` and friends)."""
    return exchange(proxy, f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


def connect(proxy: ProxyProcess, authority: str) -> bytes:
    return exchange(proxy, f"CONNECT {authority} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def curl_through(proxy: ProxyProcess, home: Path, url: str) -> tuple[int, str]:
    """curl through the proxy (NO_PROXY would send loopback URLs around it): status, body."""
    result = curl(
        client_env(home),
        "--noproxy",
        "",
        "--proxy",
        proxy.url,
        "--cacert",
        str(proxy.bundle),
        "--write-out",
        "\n%{http_code}",
        url,
        check=False,
    )
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def own_address() -> str:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("no IPv4 route off this machine")
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("no address besides loopback")
    return address


# --- destinations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "127.1", "2130706433", "[::ffff:127.0.0.1]", "[::1]"]
)
def test_absolute_form_request_to_a_loopback_address_is_refused(
    start_proxy: StartProxy, plain_origin: Origin, host: str
) -> None:
    proxy = start_proxy(plain_origin, args=["--connect-port", str(plain_origin.port)])
    response = get(proxy, f"http://{host}:{plain_origin.port}/bytes/3")
    assert status_of(response) == 403, response
    assert b"loopback" in response
    assert b"--allow-destination" in response
    assert plain_origin.requests == []


def test_request_to_cloud_metadata_is_refused(start_proxy: StartProxy) -> None:
    proxy = start_proxy()
    response = get(proxy, "http://169.254.169.254/latest/meta-data/")
    assert status_of(response) == 403, response
    assert b"link-local" in response


def test_request_to_an_address_of_this_machine_is_refused(
    start_proxy: StartProxy, plain_origin: Origin
) -> None:
    address = own_address()
    proxy = start_proxy(args=["--connect-port", str(plain_origin.port)])
    response = get(proxy, f"http://{address}:{plain_origin.port}/bytes/3")
    assert status_of(response) == 403, response
    assert b"this machine" in response


def test_request_inside_a_tunnel_to_loopback_is_refused(
    start_proxy: StartProxy, origin: Origin, tmp_path: Path
) -> None:
    proxy = start_proxy(args=["--connect-port", str(origin.port)])
    status, body = curl_through(proxy, tmp_path, f"https://127.0.0.1:{origin.port}/bytes/3")
    assert status == 403, body
    assert "loopback" in body
    assert origin.requests == []


def test_passthrough_tunnel_to_loopback_is_refused(start_proxy: StartProxy, origin: Origin) -> None:
    proxy = start_proxy(args=["--passthrough", "*", "--connect-port", str(origin.port)])
    response = exchange(
        proxy, f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert status_of(response) == 403, response
    assert b"loopback" in response
    assert origin.connections == 0


def test_allow_destination_opens_a_local_service(
    start_proxy: StartProxy, plain_origin: Origin
) -> None:
    proxy = start_proxy(
        args=["--connect-port", str(plain_origin.port), "--allow-destination", "127.0.0.0/8"]
    )
    response = get(proxy, f"http://127.0.0.1:{plain_origin.port}/bytes/3")
    assert status_of(response) == 200, response
    assert response.endswith(bytes(range(3)))


# --- ports -------------------------------------------------------------------------------------


def test_resolve_port_is_open_for_its_own_host_only(
    start_proxy: StartProxy, origin: Origin, tmp_path: Path
) -> None:
    proxy = start_proxy(origin)  # files.test:PORT (and the other names) reach the origin
    response = exchange(
        proxy, f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert status_of(response) == 403, response
    assert f"port {origin.port} is not allowed".encode() in response
    status, body = curl_through(proxy, tmp_path, f"https://files.test:{origin.port}/bytes/3")
    assert status == 200, body


def test_absolute_form_port_outside_the_allow_list_is_refused(
    start_proxy: StartProxy, plain_origin: Origin
) -> None:
    other = Origin.start()
    try:
        proxy = start_proxy(args=["--resolve", f"files.test:{other.port}:127.0.0.1"])
        response = get(proxy, f"http://files.test:{plain_origin.port}/bytes/3")
    finally:
        other.stop()
    assert status_of(response) == 403, response
    assert f"port {plain_origin.port} is not allowed".encode() in response
    assert b"--connect-port" in response


# --- listening ---------------------------------------------------------------------------------


def run_listening_on(tmp_path: Path, address: str, *extra: str) -> tuple[str, str, int | None]:
    """Start `transcache run --listen ADDRESS`; its first stdout line, its stderr so far, and
    its exit status (None while it runs; then it is stopped)."""
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [
                *TRANSCACHE,
                "run",
                "--listen",
                address,
                "--ca-dir",
                str(tmp_path / "ca"),
                "--cache-dir",
                str(tmp_path / "cache"),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert process.stdout is not None
    first = process.stdout.readline()
    status = process.poll()
    if first.startswith(LISTENING_PREFIX):
        process.terminate()
        process.wait(30)
    else:
        status = process.wait(30)
    process.stdout.close()
    return first, stderr.read_text(), status


@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0"])
def test_listening_beyond_loopback_needs_authentication(tmp_path: Path, address: str) -> None:
    first, err, status = run_listening_on(tmp_path, address)
    assert first == ""
    assert status == 2
    assert "authentication" in err
    assert "--allow-unauthenticated" in err
    assert "Traceback" not in err


def test_allow_unauthenticated_listens_with_a_warning(tmp_path: Path) -> None:
    first, err, _ = run_listening_on(tmp_path, "0.0.0.0:0", "--allow-unauthenticated")
    assert first.startswith(LISTENING_PREFIX + "http://")
    assert "WARNING" in err
    assert "no authentication" in err


def test_a_wildcard_listener_gives_clients_an_address_of_this_machine(tmp_path: Path) -> None:
    with Proxy(
        listen="0.0.0.0:0",
        allow_unauthenticated=True,
        ca_dir=tmp_path / "ca",
        cache_dir=tmp_path / "cache",
    ) as proxy:
        url = urlsplit(proxy.url)
        assert url.hostname is not None and url.port is not None
        assert not ipaddress.ip_address(url.hostname).is_unspecified
        assert proxy.env["HTTPS_PROXY"] == proxy.url
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            connection.request("GET", "/healthz")
            assert connection.getresponse().status == 200
        finally:
            connection.close()


def test_api_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    with (
        pytest.raises(ConfigError, match="authentication"),
        Proxy(listen="0.0.0.0:0", ca_dir=tmp_path / "ca", cache_dir=tmp_path / "cache"),
    ):
        pass


# --- the rules, without sockets ----------------------------------------------------------------

OWN = {ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("2001:db8::2")}


def own(address: IPAddress) -> bool:
    return address in OWN


@pytest.mark.parametrize(
    ("host", "address", "allowed", "refused_as"),
    [
        ("files.test", "203.0.113.7", (), None),
        ("files.test", "2001:db8::7", (), None),
        ("files.test", "10.1.2.3", (), None),  # a private network is not this machine
        ("localhost", "127.0.0.1", (), "a loopback"),
        ("x.test", "127.255.0.9", (), "a loopback"),
        ("x.test", "::1", (), "a loopback"),
        ("x.test", "::ffff:127.0.0.1", (), "a loopback"),
        ("x.test", "::ffff:7f00:2", (), "a loopback"),
        ("x.test", "169.254.169.254", (), "a link-local"),
        ("x.test", "::ffff:169.254.169.254", (), "a link-local"),
        ("x.test", "fe80::1", (), "a link-local"),
        ("x.test", "fe80::1%2", (), "a link-local"),
        ("x.test", "0.0.0.0", (), "an unspecified"),
        ("x.test", "0.1.2.3", (), "an unspecified"),
        ("x.test", "::", (), "an unspecified"),
        ("x.test", "192.0.2.2", (), "this machine's own"),
        ("x.test", "::ffff:192.0.2.2", (), "this machine's own"),
        ("x.test", "2001:db8::2", (), "this machine's own"),
        ("x.test", "127.0.0.1", ("127.0.0.0/8",), None),
        ("x.test", "::ffff:127.0.0.1", ("127.0.0.1",), None),
        ("x.test", "127.0.0.2", ("127.0.0.1",), "a loopback"),
        ("x.test", "192.0.2.2", ("192.0.2.0/24",), None),
        ("svc.test", "127.0.0.1", ("svc.test",), None),
        ("a.svc.test", "127.0.0.1", ("*.svc.test",), None),
        ("other.test", "127.0.0.1", ("svc.test",), "a loopback"),
        ("x.test", "::1", ("::1",), None),
    ],
)
def test_address_rules(
    host: str, address: str, allowed: tuple[str, ...], refused_as: str | None
) -> None:
    rules = tuple(parse_destination(spec) for spec in allowed)
    refusal = address_refusal(host, ipaddress.ip_address(address), rules, own)
    if refused_as is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert f" is {refused_as} address: " in refusal
        assert "--allow-destination" in refusal


def test_own_address_is_asked_only_when_no_other_rule_decides() -> None:
    asked: list[IPAddress] = []

    def recording(address: IPAddress) -> bool:
        asked.append(address)
        return False

    address_refusal("x.test", ipaddress.ip_address("127.0.0.1"), (), recording)
    address_refusal("x.test", ipaddress.ip_address("::ffff:203.0.113.7"), (), recording)
    assert asked == [ipaddress.ip_address("203.0.113.7")]


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("127.0.0.1", ipaddress.ip_network("127.0.0.1/32")),
        ("10.0.0.9/8", ipaddress.ip_network("10.0.0.0/8")),
        ("[::1]", ipaddress.ip_network("::1/128")),
        ("fe80::/10", ipaddress.ip_network("fe80::/10")),
        ("Svc.Test", "svc.test"),
        ("*.corp.example", "*.corp.example"),
    ],
)
def test_allow_destination_values(spec: str, parsed: object) -> None:
    assert parse_destination(spec) == parsed


@pytest.mark.parametrize("spec", ["", "a b", "10.0.0.0/33x", "http://x/"])
def test_bad_allow_destination_values_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="expected an address"):
        parse_destination(spec)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("myhost", False),
    ],
)
def test_loopback_listen_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("scheme", "host", "port", "allowed"),
    [
        ("https", "files.test", 443, True),
        ("http", "files.test", 80, True),
        ("http", "files.test", 443, False),
        ("https", "files.test", 80, False),
        ("https", "files.test", 8443, True),  # --connect-port 8443
        ("http", "files.test", 8443, True),
        ("https", "files.test", 9000, True),  # --resolve files.test:9000:...
        ("http", "files.test", 9000, True),
        ("https", "index.test", 9000, False),
        ("https", "127.0.0.1", 9000, False),
        ("https", "files.test", 25, False),
    ],
)
def test_port_rules(scheme: str, host: str, port: int, allowed: bool) -> None:
    config = Config(connect_ports=frozenset({8443}), resolve={("files.test", 9000): "127.0.0.1"})
    refusal = config.port_refusal(scheme, host, port)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert refusal.startswith(f"port {port} is not allowed")
        assert f"--connect-port {port}" in refusal
