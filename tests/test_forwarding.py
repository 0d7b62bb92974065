"""curl through the proxy: https through CONNECT, plain http in absolute form, uploads,
keep-alive, and the proxy's own pages."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from pathlib import Path

from .clients import curl
from .conftest import StartProxy
from .origin import Origin, client_env
from .proxyproc import ProxyProcess


def test_https_get_through_connect_returns_the_origin_body(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    origin.add_file("/hello.txt", b"hello from files.test\n", content_type="text/plain")
    result = curl(proxied_env, origin.url("files.test", "/hello.txt"))
    assert result.stdout == "hello from files.test\n"


def test_upstream_sees_via_and_no_proxy_credentials(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    result = curl(
        proxied_env,
        "--proxy-user",
        "ci:secret",
        "--header",
        "Authorization: Bearer for-the-origin",
        origin.url("files.test", "/echo"),
    )
    seen = {k.lower(): v for k, v in json.loads(result.stdout)["headers"].items()}
    assert seen["via"] == "1.1 transcache"
    assert seen["authorization"] == "Bearer for-the-origin"
    assert "proxy-authorization" not in seen
    assert "proxy-connection" not in seen
    assert seen["host"] == f"files.test:{origin.port}"


def test_https_post_body_reaches_the_origin(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str], tmp_path: Path
) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 4096)
    result = curl(proxied_env, "--data-binary", f"@{payload}", origin.url("files.test", "/echo"))
    echoed = json.loads(result.stdout)
    assert echoed["method"] == "POST"
    assert echoed["body_sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()


def test_chunked_upload_is_forwarded_whole(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str], tmp_path: Path
) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"0123456789abcdef" * 200_000)
    result = curl(
        proxied_env,
        "--header",
        "Transfer-Encoding: chunked",
        "--data-binary",
        f"@{payload}",
        origin.url("files.test", "/echo"),
    )
    echoed = json.loads(result.stdout)
    assert echoed["body_len"] == payload.stat().st_size
    assert echoed["body_sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()
    assert echoed["headers"].get("transfer-encoding") == "chunked"


def test_plain_http_is_forwarded_in_absolute_form(
    plain_origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    plain_origin.add_file("/plain.txt", b"over plain http\n")
    get = curl(proxied_env, plain_origin.url("files.test", "/plain.txt"))
    assert get.stdout == "over plain http\n"
    post = curl(proxied_env, "--data", "x=1", plain_origin.url("files.test", "/echo"))
    assert json.loads(post.stdout)["body_len"] == 3


def test_one_tunnel_carries_several_requests(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    urls = [origin.url("files.test", f"/bytes/{n}") for n in (10, 20_000, 30)]
    result = curl(
        proxied_env,
        "--write-out",
        "%{num_connects} %{size_download}\n",
        "--output",
        "/dev/null",
        "--output",
        "/dev/null",
        "--output",
        "/dev/null",
        *urls,
    )
    lines = result.stdout.split()
    # curl opened one connection to the proxy (one tunnel) and reused it twice...
    assert lines[0::2] == ["1", "0", "0"]
    assert lines[1::2] == ["10", "20000", "30"]
    # ...and the proxy used one pooled connection to the origin for all three.
    assert origin.connections == 1


def test_proxy_answers_healthz_and_serves_its_ca(
    proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    health = curl(proxied_env, "--noproxy", "*", f"{proxy.url}/healthz")
    assert health.stdout == "ok\n"
    ca = curl(proxied_env, "--noproxy", "*", f"{proxy.url}/ca.pem")
    assert ca.stdout == proxy.ca_pem.read_text()
    missing = curl(
        proxied_env, "--noproxy", "*", "--write-out", "%{http_code}", f"{proxy.url}/nope"
    )
    assert missing.stdout.endswith("404")


def test_access_log_has_one_line_per_request(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    url = origin.url("files.test", "/bytes/1234")
    curl(proxied_env, "--output", "/dev/null", url)
    lines = proxy.log_lines(url)
    assert len(lines) == 1
    _date, client, method, logged_url, status, size, ecosystem, elapsed, cache = lines[0].split()
    assert client.startswith("127.0.0.1:")
    assert (method, logged_url, status, size, cache) == ("GET", url, "200", "1234", "miss")
    assert ecosystem == "other"
    assert elapsed.endswith("ms")


def test_admin_host_is_answered_by_the_proxy_through_connect(
    proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    # transcache.invalid never resolves: only a client that uses the proxy and trusts its CA
    # gets an answer (what `transcache doctor` relies on).
    result = curl(proxied_env, "https://transcache.invalid/healthz")
    assert result.stdout == "ok\n"
    plain = curl(proxied_env, "http://transcache.invalid/healthz")
    assert plain.stdout == "ok\n"


def test_content_length_beside_chunked_never_reaches_the_origin(
    plain_origin: Origin, proxy: ProxyProcess
) -> None:
    request = (
        f"POST http://files.test:{plain_origin.port}/echo HTTP/1.1\r\n"
        "Host: files.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(request)
        response = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    echoed = json.loads(body)
    assert echoed["body_len"] == 5
    assert "content-length" not in {name.lower() for name in echoed["headers"]}


def test_run_writes_a_json_access_log_and_serves_metrics_through_a_tunnel(
    start_proxy: StartProxy, plain_origin: Origin, home: Path
) -> None:
    proxy = start_proxy(plain_origin, args=["--access-log-format", "json"])
    env = client_env(home, proxy.env())
    url = plain_origin.url("files.test", "/bytes/1234")
    curl(env, "--output", "/dev/null", url)
    [line] = proxy.log_lines(f'"url": "{url}"')
    logged = json.loads(line)
    assert (logged["method"], logged["status"], logged["bytes"]) == ("GET", 200, 1234)
    assert (logged["ecosystem"], logged["outcome"]) == ("other", "miss")
    metrics = curl(env, "https://transcache.invalid/metrics").stdout
    assert 'transcache_requests_total{ecosystem="other",outcome="miss"} 1.0' in metrics


def test_bytes_an_origin_sends_past_its_response_never_answer_the_next_request(
    tmp_path: Path,
) -> None:
    # An origin that answers its first request with a second, unasked-for response in the
    # same write (response splitting), then answers honestly on any new connection.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    connections: list[socket.socket] = []

    def serve() -> None:
        for number in range(2):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            conn.recv(65536)
            if number == 0:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\n"
                    b"first\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsmuggled\n"
                )
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsecond\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with ProxyProcess.start(tmp_path / "proxy", resolve=[("split.test", port)]) as proxy:
            env = {"PATH": os.environ["PATH"], "http_proxy": proxy.url}
            url = f"http://split.test:{port}/"
            assert curl(env, "--header", "Cache-Control: no-store", url).stdout == "first\n"
            again = curl(env, "--header", "Cache-Control: no-store", url + "again")
            assert again.stdout == "second\n"
    finally:
        listener.close()
        for conn in connections:
            conn.close()
        thread.join(5)
