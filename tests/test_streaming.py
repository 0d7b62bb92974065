"""Bodies stream through the proxy with bounded memory: a download twice the size of the RSS
limit does not grow the proxy (a memory bound, never a timing), and streamed bytes arrive
exactly as sent."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .clients import curl
from .origin import Origin, pattern
from .proxyproc import ProxyProcess

RSS_LIMIT = 150 * 1024 * 1024
# Larger than the limit: a proxy that buffered it would break the limit.
LARGE = 2 * RSS_LIMIT


def test_a_download_larger_than_the_rss_limit_streams_in_bounded_memory(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    result = curl(
        proxied_env,
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code} %{size_download}",
        origin.url("files.test", f"/bytes/{LARGE}"),
    )
    assert result.stdout == f"200 {LARGE}"
    assert proxy.peak_rss_bytes() < RSS_LIMIT


def test_chunked_response_arrives_byte_exact(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str], tmp_path: Path
) -> None:
    size = 5 * 1024 * 1024 + 17
    out = tmp_path / "body"
    curl(proxied_env, "--output", str(out), origin.url("files.test", f"/chunked/{size}"))
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(pattern(size)).digest()


def test_large_upload_streams_without_growing_the_proxy(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str], tmp_path: Path
) -> None:
    size = 256 * 1024 * 1024  # several times the RSS bound: buffering it would show
    payload = tmp_path / "upload.bin"
    with payload.open("wb") as f:
        f.truncate(size)  # sparse: costs no disk, reads as zeros
    result = curl(
        proxied_env,
        "--header",
        "Transfer-Encoding: chunked",
        "--data-binary",
        f"@{payload}",
        origin.url("files.test", "/echo"),
    )
    assert f'"body_len": {size}' in result.stdout
    assert proxy.peak_rss_bytes() < RSS_LIMIT
