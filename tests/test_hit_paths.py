"""A hit's bytes are the same whichever path serves them: a small body sent with its head in
one write, a large one in buffered writes into TLS or by sendfile to a plain-HTTP client,
whole, as ranges or as HEAD; and what another process sharing the cache dir publishes or
evicts is seen at the next lookup, never answered from this process's memory."""

from __future__ import annotations

import os
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from transcache._channel import FILE_CHUNK, Channel
from transcache.cache.decide import stored_head
from transcache.cache.sources import EntryGoneError, StoredResponse
from transcache.store import Store

from .origin import Origin
from .proxyproc import ProxyProcess
from .test_cache import fetch
from .test_store import MAX_SIZE, publish

CACHEABLE = {"Cache-Control": "public, max-age=3600"}
SMALL = 5_000
# Several 1 MiB buffers, and more than a socket takes at once (sendfile waits), odd-sized.
LARGE = 5 * 1024 * 1024 + 123


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
def test_a_hit_is_the_same_bytes_over_tls_and_plain_http_whole_ranged_and_head(
    origin: Origin,
    plain_origin: Origin,
    proxy: ProxyProcess,
    proxied_env: dict[str, str],
    size: int,
) -> None:
    data = os.urandom(size)
    middle = (size // 3, size // 3 + size // 2)  # crosses buffer boundaries when large
    for server in (origin, plain_origin):
        server.add_file("/blob.bin", data, headers=CACHEABLE)
        url = server.url("files.test", "/blob.bin")
        fetch(proxied_env, url)
        for _ in range(2):  # the second hit uses the head rendered by the first
            status, headers, body = fetch(proxied_env, url)
            assert (status, headers["cache-status"]) == (200, "transcache; hit")
            assert headers["content-length"] == str(size)
            assert body == data, server.scheme
        status, headers, body = fetch(
            proxied_env, url, "--header", f"Range: bytes={middle[0]}-{middle[1]}"
        )
        assert status == 206
        assert headers["content-range"] == f"bytes {middle[0]}-{middle[1]}/{size}"
        assert body == data[middle[0] : middle[1] + 1]
        status, headers, body = fetch(proxied_env, url, "--header", f"Range: bytes=-{size // 4}")
        assert (status, body) == (206, data[-(size // 4) :])
        status, headers, body = fetch(proxied_env, url, "--head")
        assert (status, body, headers["content-length"]) == (200, b"", str(size))
        assert headers["accept-ranges"] == "bytes"
        assert len(server.requests_to("/blob.bin")) == 1


def test_a_hit_answered_with_connection_close_says_so_and_ends(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str]
) -> None:
    origin.add_file("/page.html", b"<p>hello</p>", headers=CACHEABLE)
    url = origin.url("files.test", "/page.html")
    fetch(proxied_env, url)
    status, headers, body = fetch(proxied_env, url, "--header", "Connection: close")
    assert (status, body) == (200, b"<p>hello</p>")
    assert headers["connection"] == "close"
    assert headers["cache-status"] == "transcache; hit"


def test_an_entry_another_process_replaces_is_read_anew(tmp_path: Path) -> None:
    ours, theirs = Store(tmp_path, MAX_SIZE), Store(tmp_path, MAX_SIZE)
    old = publish(ours, "k", b"the old body")
    assert ours.get("k") is not None  # remembered as written
    new = publish(theirs, "k", b"the new body, another size")
    os.unlink(old.body_path)  # and the old body evicted
    found = ours.get("k")
    assert found is not None and found.digest == new.digest
    head = stored_head(found, [], False, 0.0, b"transcache; hit")
    assert StoredResponse(head, found, ours).small == b"the new body, another size"
    theirs.remove("k")
    os.unlink(new.body_path)
    assert ours.get("k") is None


def test_a_remembered_entry_whose_body_another_process_evicted_is_not_served(
    tmp_path: Path,
) -> None:
    ours, theirs = Store(tmp_path, MAX_SIZE), Store(tmp_path, MAX_SIZE)
    body = os.urandom(200_000)  # large: opened at lookup, not kept in memory
    entry = publish(ours, "k", body)
    remembered = ours.get("k")
    assert remembered is not None
    head = stored_head(remembered, [], False, 0.0, b"transcache; hit")
    answering = StoredResponse(head, remembered, ours)
    os.unlink(entry.body_path)  # evicted by the other process; its metadata left behind
    assert trio.run(answering.read)[:100] == body[:100]  # opened at lookup: still whole
    trio.run(answering.aclose)
    assert theirs.get("k") is None  # which the other process notices and removes
    with pytest.raises(EntryGoneError):
        StoredResponse(head, remembered, ours)  # a later lookup: gone, so looked up again
    assert ours.get("k") is None


async def _send_body(channel: Channel, path: Path, size: int) -> None:
    """Answer the request h11 read with a file body sent by `send_file_span`."""
    head = h11.Response(status_code=200, headers=[(b"Content-Length", b"%d" % size)])
    await channel.stream.send_all(channel.conn.send(head))
    buffer = bytearray(FILE_CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while offset < size:
            offset += await channel.send_file_span(fd, offset, size - offset, buffer)
    finally:
        os.close(fd)
    channel.conn.send(h11.EndOfMessage())  # h11 agrees that the whole body went out
    assert channel.conn.our_state is h11.DONE
    await channel.stream.aclose()


@pytest.mark.parametrize("transport", ["socket", "memory"])
async def test_a_file_body_arrives_whole_by_sendfile_or_through_the_buffer(
    tmp_path: Path, transport: str
) -> None:
    data = os.urandom(LARGE)
    path = tmp_path / "body"
    path.write_bytes(data)
    if transport == "socket":  # sendfile, waiting whenever the socket is full
        a, b = trio.socket.socketpair()
        ours: trio.abc.Stream = trio.SocketStream(a)
        theirs: trio.abc.Stream = trio.SocketStream(b)
    else:  # read into the reused buffer, written from it
        ours, theirs = trio.testing.memory_stream_pair()
    channel = Channel(ours, h11.Connection(h11.SERVER))
    channel.conn.receive_data(b"GET /body HTTP/1.1\r\nHost: files.test\r\n\r\n")
    assert isinstance(channel.conn.next_event(), h11.Request)
    received = bytearray()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_body, channel, path, LARGE)
            while chunk := await theirs.receive_some(1024 * 1024):
                received += chunk
    assert bytes(received).partition(b"\r\n\r\n")[2] == data
