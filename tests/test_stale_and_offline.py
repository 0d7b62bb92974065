"""When a stored copy may answer for an origin that does not: only when the origin cannot be
reached (refused, unresolvable, timed out) and only where the stored response allows it
(RFC 9111 4.2.4 and 5.2.2), never after an upstream certificate failure; and offline mode
never opens an upstream connection, tunnels included."""

from __future__ import annotations

from pathlib import Path

import pytest

from .clients import curl
from .conftest import StartProxy, resolve_names
from .origin import Origin, client_env
from .proxyproc import ProxyProcess
from .test_cache import fetch


@pytest.mark.parametrize(
    ("cache_control", "forbidden_by"),
    [
        ("max-age=0", None),
        ("max-age=0, must-revalidate", "must-revalidate"),
        ("max-age=0, proxy-revalidate", "proxy-revalidate"),
        ("s-maxage=0", "s-maxage"),
        ("no-cache", "no-cache"),
    ],
)
def test_unreachable_origin_gets_a_stale_copy_only_where_the_entry_allows_it(
    origin: Origin, start_proxy: StartProxy, home: Path, cache_control: str, forbidden_by: str
) -> None:
    origin.add_file("/doc.txt", b"kept", headers={"Cache-Control": cache_control})
    proxy = start_proxy(origin)
    env = client_env(home, proxy.env())
    url = origin.url("files.test", "/doc.txt")
    assert fetch(env, url)[2] == b"kept"
    origin.stop()
    status, headers, body = fetch(env, url)
    if forbidden_by is None:
        assert (status, body) == (200, b"kept")
        assert headers["cache-status"] == 'transcache; fwd=stale; detail="upstream-unreachable"'
    else:
        assert status == 504
        assert forbidden_by.encode() in body
        assert b"kept" not in body


def test_certificate_failure_is_a_502_never_a_stale_copy(
    origin: Origin, start_proxy: StartProxy, home: Path
) -> None:
    origin.add_file("/doc.txt", b"kept", headers={"Cache-Control": "max-age=0"})
    proxy = start_proxy(origin)
    url = origin.url("files.test", "/doc.txt")
    assert fetch(client_env(home, proxy.env()), url)[2] == b"kept"
    proxy.stop()
    # The same cache, but the origin's CA is no longer trusted: as if someone intercepted.
    with ProxyProcess.start(proxy.workdir, resolve=resolve_names(origin)) as distrusting:
        status, _, body = fetch(client_env(home, distrusting.env()), url)
        assert status == 502
        assert b"TLS verification failed" in body
        assert b"kept" not in body


def test_offline_passthrough_host_is_a_504_without_connecting(
    origin: Origin, start_proxy: StartProxy, home: Path
) -> None:
    origin.add_file("/doc.txt", b"kept")
    proxy = start_proxy(origin, args=["--offline", "--passthrough", "*.test"])
    env = client_env(home, proxy.env())
    result = curl(env, origin.url("files.test", "/doc.txt"), check=False)
    assert "CONNECT tunnel failed, response 504" in result.stderr
    assert proxy.log_lines(f"CONNECT files.test:{origin.port}: offline mode")
    assert proxy.log_lines(f"CONNECT files.test:{origin.port} 504")
    assert origin.connections == 0


def test_offline_uncacheable_git_request_inside_a_tunnel_is_a_504_without_connecting(
    origin: Origin, start_proxy: StartProxy, home: Path
) -> None:
    proxy = start_proxy(origin, args=["--offline"])
    env = client_env(home, proxy.env())
    result = curl(
        env,
        "--include",
        "--header",
        "Content-Type: application/x-git-upload-pack-request",
        "--data-binary",
        "0000",
        origin.url("git.test", "/git/pkg.git/git-upload-pack"),
    )
    assert "HTTP/1.1 504 Gateway Timeout" in result.stdout
    assert "offline mode" in result.stdout
    assert origin.connections == 0
