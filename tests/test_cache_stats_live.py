"""`cache stats` and `cache ls` right after a request: with a proxy running on the cache dir
(it is asked for its live counts) and after it stopped (it flushed them at exit); each shows
the ecosystem of what it counts or lists."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.origin import Origin
from transcache import Proxy
from transcache.cli import main

WHEEL = "/packages/ab/cd/0123456789abcdef0123/demo-1.0-py3-none-any.whl"
PAGE = "/page.html"


def fetch_through(proxy: Proxy, url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
    with opener.open(url, timeout=30) as response:
        return bytes(response.read())


def cache_command(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["cache", *args]) == 0
    return capsys.readouterr().out


@pytest.fixture
def proxy(tmp_path: Path, plain_origin: Origin) -> Proxy:
    plain_origin.add_file(WHEEL, b"w" * 2000, headers={"Cache-Control": "max-age=3600"})
    plain_origin.add_file(PAGE, b"p" * 100, headers={"Cache-Control": "max-age=3600"})
    return Proxy(
        ca_dir=tmp_path / "ca",
        cache_dir=tmp_path / "cache",
        resolve={("files.test", plain_origin.port): "127.0.0.1"},
    )


def test_cache_stats_are_exact_at_once_while_the_proxy_runs_and_after_it_stops(
    proxy: Proxy, plain_origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = str(tmp_path / "cache")
    wheel = plain_origin.url("files.test", WHEEL)
    with proxy:
        fetch_through(proxy, wheel)
        fetch_through(proxy, wheel)
        live = json.loads(cache_command(capsys, "stats", "--json", "--cache-dir", cache_dir))
        assert (live["hits"], live["misses"], live["entries"]) == (1, 1, 1)
        assert live["ecosystems"] == {
            "pypi": {
                "hits": 1,
                "misses": 1,
                "bytes_from_cache": 2000,
                "bytes_from_upstream": 2000,
            }
        }
        fetch_through(proxy, plain_origin.url("files.test", PAGE))
    stopped = json.loads(cache_command(capsys, "stats", "--json", "--cache-dir", cache_dir))
    assert (stopped["hits"], stopped["misses"], stopped["entries"]) == (1, 2, 2)
    assert stopped["ecosystems"]["other"]["misses"] == 1
    text = cache_command(capsys, "stats", "--cache-dir", cache_dir)
    assert "ecosystem" in text
    [pypi_row] = [line for line in text.splitlines() if line.startswith("pypi ")]
    assert pypi_row.split() == ["pypi", "1", "1", "2000", "2000"]


def test_cache_ls_shows_each_entrys_ecosystem(
    proxy: Proxy, plain_origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with proxy:
        fetch_through(proxy, plain_origin.url("files.test", WHEEL))
        fetch_through(proxy, plain_origin.url("files.test", PAGE))
    listing = cache_command(capsys, "ls", "--cache-dir", str(tmp_path / "cache"))
    rows = {line.split()[-1]: line.split()[-2] for line in listing.splitlines()}
    assert rows == {
        plain_origin.url("files.test", PAGE): "other",
        plain_origin.url("files.test", WHEEL): "pypi",
    }
