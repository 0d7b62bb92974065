"""A stored body that is not what its digest says (a flipped bit on disk) never reaches a
client as a complete response: the first use of each body in a process hashes it, whatever
the request (whole body, Range, HEAD), and a mismatch makes the request a miss that fetches
the good body again."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from .conftest import StartProxy
from .origin import Origin, client_env
from .proxyproc import ProxyProcess
from .test_cache import fetch

MiB = 1024 * 1024


PUBLISH_TIMEOUT = 10.0


def blob_path(proxy: ProxyProcess, data: bytes) -> Path:
    """Where `data` is stored, once published: a client has its last byte a moment before the
    download is renamed into place, so this waits for the rename."""
    digest = hashlib.sha256(data).hexdigest()
    path = proxy.workdir / "cache" / "v1" / "blobs" / digest[:2] / digest[2:4] / digest
    deadline = time.monotonic() + PUBLISH_TIMEOUT
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return path


def flip_byte(path: Path, offset: int) -> None:
    damaged = bytearray(path.read_bytes())
    damaged[offset] ^= 0x01
    path.write_bytes(bytes(damaged))


@pytest.mark.parametrize("size", [1000, 3 * MiB], ids=["small", "large"])
@pytest.mark.parametrize("request_kind", ["whole", "range", "head"])
def test_a_corrupted_body_is_never_served_as_a_hit(
    origin: Origin, start_proxy: StartProxy, home: Path, size: int, request_kind: str
) -> None:
    data = os.urandom(size)
    origin.add_file("/pkg.whl", data)
    url = origin.url("files.test", "/pkg.whl")
    first = start_proxy(origin)
    assert fetch(client_env(home, first.env()), url)[2] == data
    blob = blob_path(first, data)
    first.stop()
    flip_byte(blob, size // 2)  # on disk while no proxy runs: bit rot

    proxy = start_proxy(origin)  # the same cache dir
    env = client_env(home, proxy.env())
    if request_kind == "whole":
        status, headers, body = fetch(env, url)
        assert (status, body) == (200, data)
    elif request_kind == "range":
        status, headers, body = fetch(env, url, "--header", f"Range: bytes=0-{size - 1}")
        assert (status, body) == (206, data)
    else:
        status, headers, body = fetch(env, url, "--head")
        assert (status, headers["content-length"]) == (200, str(size))
    assert headers["cache-status"].startswith("transcache; fwd=miss"), headers
    assert "corrupt" in proxy.log
    # The good body was fetched again and is what hits serve from now on.
    status, headers, body = fetch(env, url)
    if headers["cache-status"] != "transcache; hit":  # HEAD and Range misses fill it behind
        status, headers, body = fetch(env, url)
    assert (status, body, headers["cache-status"]) == (200, data, "transcache; hit")
    assert blob_path(proxy, data).read_bytes() == data


def test_a_body_corrupted_while_the_proxy_runs_is_not_served(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    data = os.urandom(3 * MiB)
    origin.add_file("/pkg.whl", data)
    url = origin.url("files.test", "/pkg.whl")
    assert fetch(proxied_env, url)[2] == data
    blob = blob_path(proxy, data)
    before = blob.stat()
    flip_byte(blob, 0)
    # A write moves the mtime, but maybe not past a coarse clock's tick: make sure it moved.
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    status, headers, body = fetch(proxied_env, url)
    assert (status, body) == (200, data)
    assert headers["cache-status"].startswith("transcache; fwd=miss"), headers
    assert len(origin.requests_to("/pkg.whl")) == 2
