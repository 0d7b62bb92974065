"""The embedding API: `Proxy` (synchronous, background thread) and `open_proxy` (trio) run
real pip downloads from a local index, count them per tag, and leave nothing behind."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from transcache import Proxy, open_proxy
from transcache._ca import CertificateAuthority
from transcache._launch import NODE_CA_VARIABLE, tagged_url

from .clients import CLIENT_TIMEOUT, curl, pip_download, run
from .origin import Origin, client_env
from .packages import make_index
from .test_install_clients import https_origin, node_get

# trio's idle worker threads (trio.to_thread, used by the cache to publish bodies) exit after
# 10 s without work; a stopped proxy's process must be back to its baseline within this.
SETTLE_SECONDS = 30.0


def proxy_options(tmp_path: Path, origin: Origin, origin_ca_pem: Path) -> dict[str, Any]:
    return {
        "cache_dir": tmp_path / "cache",
        "ca_dir": tmp_path / "ca",
        "upstream_ca": [origin_ca_pem],
        "resolve": [f"index.test:{origin.port}:127.0.0.1"],
    }


def open_sockets() -> set[str]:
    """This process's socket file descriptors, as their /proc link names (Linux)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if target.startswith("socket:"):
            found.add(target)
    return found


def settled(check: Callable[[], bool], deadline: float = SETTLE_SECONDS) -> bool:
    """Poll `check` until it holds or the deadline passes."""
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_proxy_runs_pip_in_a_synchronous_harness_and_stops_cleanly(
    origin: Origin, origin_ca_pem: Path, tmp_path: Path, home: Path
) -> None:
    make_index(origin, tmp_path / "dists")
    threads_before = set(threading.enumerate())
    sockets_before = open_sockets()
    with Proxy(**proxy_options(tmp_path, origin, origin_ca_pem)) as proxy:
        run(
            pip_download(origin.url("index.test", "/simple/"), tmp_path / "cold", "alpha"),
            client_env(home, proxy.env),
        )
        run(
            pip_download(origin.url("index.test", "/simple/"), tmp_path / "warm", "alpha"),
            client_env(home, proxy.env_for("warm-run")),
        )
        url = proxy.url
        assert proxy.ca_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert sorted(p.name for p in (tmp_path / "warm").iterdir()) == [
        "alpha-1.0-py3-none-any.whl",
        "beta-1.0-py3-none-any.whl",
    ]
    stats = proxy.stats()
    assert stats.total.upstream_requests >= 4  # two index pages, two wheels (at least)
    assert stats.by_tag["warm-run"].hits >= 2
    assert stats.by_tag["warm-run"].upstream_bytes < stats.total.upstream_bytes
    # Stopped: our thread is joined, the port is closed, at once.
    assert not [t for t in threading.enumerate() if t.name == "transcache"]
    assert refuses_connections(url)
    # Nothing else of ours is left either: sockets (the upstream pool's, the origin's end of
    # them) close, and trio's idle worker threads exit on their own idle timeout.
    assert settled(lambda: open_sockets() <= sockets_before), open_sockets() - sockets_before
    assert settled(lambda: set(threading.enumerate()) <= threads_before), [
        t.name for t in set(threading.enumerate()) - threads_before
    ]


def test_proxy_that_cannot_listen_raises_and_leaves_no_thread(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proxy = Proxy(listen=f"127.0.0.1:{port}", ca_dir=tmp_path / "ca", cache_dir=tmp_path)
        with pytest.raises(OSError):
            proxy.start()
    assert not [t for t in threading.enumerate() if t.name == "transcache"]


def test_unknown_option_is_refused_when_the_proxy_is_built() -> None:
    with pytest.raises(TypeError, match="cache_directory"):
        Proxy(cache_directory="/tmp")


def test_tags_must_be_url_safe() -> None:
    assert tagged_url("http://127.0.0.1:8080", "t-1.x") == "http://t-1.x:@127.0.0.1:8080"
    with pytest.raises(ValueError, match="tag"):
        tagged_url("http://127.0.0.1:8080", "tests/a.py::b")


def test_offline_miss_is_a_504_naming_the_url_and_counted(
    origin: Origin, origin_ca_pem: Path, tmp_path: Path, home: Path
) -> None:
    make_index(origin, tmp_path / "dists")
    options = proxy_options(tmp_path, origin, origin_ca_pem)
    url = origin.url("index.test", "/simple/gamma/")
    with Proxy(**options, offline=True) as proxy:
        result = curl(
            client_env(home, proxy.env_for("hermetic")), "--write-out", "%{http_code}", url
        )
        assert settled(lambda: proxy.stats().total.offline_misses == [url])
    assert result.stdout.endswith("504")
    assert url in result.stdout
    assert proxy.stats().by_tag["hermetic"].offline_misses == [url]
    assert origin.requests == []


async def test_open_proxy_serves_a_trio_program(
    origin: Origin, origin_ca_pem: Path, tmp_path: Path, home: Path
) -> None:
    make_index(origin, tmp_path / "dists")
    async with open_proxy(**proxy_options(tmp_path, origin, origin_ca_pem)) as proxy:
        assert proxy.url.startswith("http://127.0.0.1:")
        with trio.fail_after(CLIENT_TIMEOUT):
            result = await trio.run_process(
                pip_download(origin.url("index.test", "/simple/"), tmp_path / "wheels", "delta"),
                env=client_env(home, proxy.env_for("trio")),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert result.returncode == 0, result.stderr.decode()
    counters = proxy.stats().by_tag["trio"]  # complete once the block has closed everything
    assert counters.upstream_requests >= 4
    assert counters.upstream_bytes > 0
    assert sorted(p.name for p in (tmp_path / "wheels").iterdir()) == [
        "delta-1.0-py3-none-any.whl",
        "gamma-1.0-py3-none-any.whl",
    ]


def test_proxy_env_sends_a_plain_subprocess_through_the_proxy(
    origin: Origin, origin_ca_pem: Path, tmp_path: Path
) -> None:
    """The README's recipe: `subprocess.run(cmd, env={**os.environ, **proxy.env})`."""
    make_index(origin, tmp_path / "dists")
    with Proxy(**proxy_options(tmp_path, origin, origin_ca_pem)) as proxy:
        subprocess.run(
            pip_download(origin.url("index.test", "/simple/"), tmp_path / "wheels", "beta"),
            env={**os.environ, **proxy.env},
            check=True,
            capture_output=True,
            timeout=CLIENT_TIMEOUT,
        )
    assert proxy.stats().total.upstream_requests >= 2


def test_proxy_env_keeps_the_users_extra_node_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user whose Node trusts a corporate CA through NODE_EXTRA_CA_CERTS: the variables a
    # proxy hands out (exec, the API, `run`'s exports) add our CA to theirs, not replace it.
    corporate = trustme.CA()
    corporate_file = tmp_path / "corporate.pem"
    corporate.cert_pem.write_to_path(str(corporate_file))
    monkeypatch.setenv(NODE_CA_VARIABLE, str(corporate_file))
    with Proxy(ca_dir=tmp_path / "ca", cache=False) as proxy:
        env = {**os.environ, **proxy.env}
        ours = CertificateAuthority.load_or_create(tmp_path / "ca").server_context("127.0.0.1")
    corporate_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    corporate.issue_cert("127.0.0.1").configure_cert(corporate_context)
    with https_origin(corporate_context) as corporate_url, https_origin(ours) as our_url:
        for url in (corporate_url, our_url):
            result = node_get(url, env)
            assert result.returncode == 0, (url, env[NODE_CA_VARIABLE], result.stderr)
    # From a shell already set up with these variables, the same file: nothing nests.
    monkeypatch.setenv(NODE_CA_VARIABLE, env[NODE_CA_VARIABLE])
    with Proxy(ca_dir=tmp_path / "ca", cache=False) as again:
        assert again.env[NODE_CA_VARIABLE] == env[NODE_CA_VARIABLE]
