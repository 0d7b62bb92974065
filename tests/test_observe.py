"""What the proxy tells about itself, in-process against a loopback origin: /metrics (parsed
by prometheus_client's own parser) after a known sequence of hits, misses and errors; the
JSON access log's fields; the ecosystem in the text access log; the live /stats.json."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.inprocess import Client, Reply, connected, proxy_server
from tests.origin import Origin
from transcache._access import Exchange, JsonAccessFormatter
from transcache._activity import Activity
from transcache._metrics import Gauges
from transcache._server import ProxyServer
from transcache._status_page import Download, StatusView, render
from transcache.cache import Outcome

WHEEL = "/packages/ab/cd/0123456789abcdef0123/demo-1.0-py3-none-any.whl"
TARBALL = "/demo/-/demo-2.1.0.tgz"
FRESH = {"Cache-Control": "max-age=3600"}


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def server(tmp_path: Path, plain_origin: Origin) -> AsyncIterator[ProxyServer]:
    """A whole proxy with its cache running (no listener: clients connect in memory)."""
    plain_origin.add_file(WHEEL, b"w" * 3000, headers=FRESH)
    plain_origin.add_file(TARBALL, b"t" * 500, headers=FRESH)
    resolve = {
        ("files.test", plain_origin.port): "127.0.0.1",
        ("down.test", closed_port()): "127.0.0.1",
    }
    proxy = proxy_server(tmp_path, cache=True, resolve=resolve)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve, [])
        yield proxy
        nursery.cancel_scope.cancel()


@pytest.fixture
def access_lines() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Recording(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Recording()
    logger = logging.getLogger("transcache.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)


async def get(client: Client, url: str) -> Reply:
    host = url.split("/")[2] if "://" in url else "proxy"
    await client.send(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return await client.response()


async def known_sequence(server: ProxyServer, client: Client, origin: Origin) -> None:
    """A pypi miss and two hits, an npm miss, and an origin that refuses connections."""
    wheel = origin.url("files.test", WHEEL)
    for expected in ("fwd=miss", "hit", "hit"):
        reply = await get(client, wheel)
        assert reply.status == 200 and expected in reply.headers["cache-status"]
        await server.cache.downloads.wait_idle()  # stored before the next one asks
    assert (await get(client, origin.url("files.test", TARBALL))).status == 200
    await server.cache.downloads.wait_idle()
    down = next(port for (host, port) in server.config.resolve if host == "down.test")
    assert (await get(client, f"http://down.test:{down}/x")).status == 502


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_a_known_sequence_of_hits_misses_and_errors(
    server: ProxyServer, plain_origin: Origin
) -> None:
    async with connected(server.handle) as client:
        await known_sequence(server, client, plain_origin)
        reply = await get(client, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == CONTENT_TYPE_LATEST
    values = samples(reply.text)

    def value(name: str, **labels: str) -> float:
        return values[(name, frozenset(labels.items()))]

    assert value("transcache_requests_total", outcome="miss", ecosystem="pypi") == 1
    assert value("transcache_requests_total", outcome="hit", ecosystem="pypi") == 2
    assert value("transcache_requests_total", outcome="miss", ecosystem="npm") == 1
    assert value("transcache_requests_total", outcome="error", ecosystem="other") == 1
    assert value("transcache_bytes_total", source="cache") == 2 * 3000
    assert value("transcache_bytes_total", source="upstream") == 3000 + 500
    assert value("transcache_upstream_requests_total", status_class="2xx") == 2
    assert value("transcache_upstream_errors_total", kind="unreachable") == 1
    assert value("transcache_request_duration_seconds_count", outcome="hit") == 2
    assert value("transcache_cache_entries") == 2
    assert value("transcache_cache_bytes") == 3500
    assert value("transcache_cache_max_bytes") == server.config.max_size
    assert value("transcache_connections_open") == 0  # in-process: no listener's slots
    assert value("transcache_downloads_in_flight") == 0
    # The proxy's own pages are not traffic: /metrics did not count itself.
    requests = sum(v for (name, _), v in values.items() if name == "transcache_requests_total")
    assert requests == 5


async def test_json_access_log_has_one_object_per_request_with_its_fields(
    server: ProxyServer, plain_origin: Origin, access_lines: list[logging.LogRecord]
) -> None:
    async with connected(server.handle) as client:
        await known_sequence(server, client, plain_origin)
    formatter = JsonAccessFormatter()
    objects = [json.loads(formatter.format(record)) for record in access_lines]
    wheel = plain_origin.url("files.test", WHEEL)
    assert [o["outcome"] for o in objects] == ["miss", "hit", "hit", "miss", "error"]
    first = objects[0]
    assert set(first) == {
        "time",
        "peer",
        "method",
        "url",
        "status",
        "bytes",
        "ecosystem",
        "duration_ms",
        "outcome",
        "tag",
        "error",
    }
    assert (first["method"], first["url"], first["status"], first["bytes"]) == (
        "GET",
        wheel,
        200,
        3000,
    )
    assert first["ecosystem"] == "pypi" and first["tag"] is None and first["error"] is None
    assert first["time"].endswith("+00:00") and first["duration_ms"] >= 0
    assert objects[3]["ecosystem"] == "npm"
    assert objects[4]["status"] == 502 and "cannot connect" in objects[4]["error"]


async def test_text_access_log_names_the_ecosystem_after_the_byte_count(
    server: ProxyServer, plain_origin: Origin, access_lines: list[logging.LogRecord]
) -> None:
    async with connected(server.handle) as client:
        await known_sequence(server, client, plain_origin)
    fields = access_lines[1].getMessage().split()
    assert fields[3:6] == ["200", "3000", "pypi"]
    assert fields[6].endswith("ms") and fields[-1] == "hit"


async def test_stats_page_has_this_proxys_counts_at_once(
    server: ProxyServer, plain_origin: Origin
) -> None:
    async with connected(server.handle) as client:
        await known_sequence(server, client, plain_origin)
        stats = json.loads((await get(client, "/stats.json")).body)
    assert (stats["hits"], stats["misses"]) == (2, 2)
    assert stats["entries"] == 2 and stats["bytes"] == 3500
    assert stats["ecosystems"]["pypi"] == {
        "hits": 2,
        "misses": 1,
        "bytes_from_cache": 6000,
        "bytes_from_upstream": 3000,
    }
    assert stats["ecosystems"]["npm"]["misses"] == 1


async def test_stats_page_counts_the_tasks_of_open_connections(server: ProxyServer) -> None:
    async with connected(server.handle) as reader:
        async with connected(server.handle) as other:
            await get(other, "/healthz")  # its connection is being served
            with_other = json.loads((await get(reader, "/stats.json")).body)["tasks"]
        without_other = json.loads((await get(reader, "/stats.json")).body)["tasks"]
    assert with_other > without_other > 0


def test_status_page_shows_downloads_in_flight_with_progress_and_recent_errors() -> None:
    activity = Activity()
    failed = Exchange("127.0.0.1:1", "GET", "http://down.test/x", status=502)
    failed.outcome, failed.error = Outcome.ERROR, "cannot connect to down.test:80"
    activity.record(failed, 0.1)
    view = StatusView(
        "1.2.3",
        activity,
        Gauges(connections_open=1, downloads_in_flight=1),
        [Download("http://files.test/big.iso", 512 * 1024, 2 * 1024 * 1024)],
        (),
    )
    html = render(view).decode()
    assert '<progress value="524288" max="2097152">' in html
    assert "512.0 KiB of 2.0 MiB" in html and "http://files.test/big.iso" in html
    assert "cannot connect to down.test:80" in html and "no cache" in html
    assert "<script" not in html and 'http-equiv="refresh"' in html
