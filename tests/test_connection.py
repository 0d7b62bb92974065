"""The HTTP/1.1 connection loop in process, on the virtual clock: time limits on heads, idle
connections and bodies, error answers and the linger after them, malformed heads, keep-alive
and `Connection: close`. The loop runs with a scripted router (tests/inprocess.py); the last
tests go through the whole server, for what its routing rejects."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from transcache._config import Config
from transcache._connection import LINGER_SECONDS
from transcache._errors import UpstreamError

from .inprocess import EchoRouter, FakeSource, Seen, connected, connection_loop, proxy_server

HEADER_TIMEOUT = 5.0
IDLE_TIMEOUT = 20.0
BODY_TIMEOUT = 3.0
MIN_BODY_RATE = 100
LIMITS = Config(
    header_timeout=HEADER_TIMEOUT,
    idle_timeout=IDLE_TIMEOUT,
    body_timeout=BODY_TIMEOUT,
    min_body_rate=MIN_BODY_RATE,
    max_header_bytes=8 * 1024,
)
GET = b"GET http://files.test/a HTTP/1.1\r\nHost: files.test\r\n\r\n"
GET_AND_CLOSE = b"GET http://files.test/a HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n"
POST_100 = b"POST http://files.test/up HTTP/1.1\r\nHost: files.test\r\nContent-Length: 100\r\n\r\n"


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# --- keep-alive and Connection: close --------------------------------------------------------


async def test_two_requests_are_answered_on_one_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = EchoRouter()
    async with connected(connection_loop(router, LIMITS)) as client:
        await client.send(GET)
        first = await client.response()
        await client.send(POST_100 + b"x" * 100)
        second = await client.response()
        assert not client.served.is_set()
    assert (first.status, first.body) == (200, b"GET /a 0\n")
    assert (second.status, second.body) == (200, b"POST /up 100\n")
    assert [seen.method for seen in router.seen] == [b"GET", b"POST"]


async def test_connection_close_ends_the_connection_after_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(connection_loop(EchoRouter(), LIMITS)) as client:
        started = trio.current_time()
        await client.send(GET_AND_CLOSE)
        reply = await client.response()
        assert await client.read_until_closed() == b""
        await client.served.wait()
        assert trio.current_time() - started == 0
    assert reply.status == 200


async def test_error_answer_to_a_connection_close_client_closes_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The client sent its whole request and said it is done: nothing to linger for.
    server = proxy_server(tmp_path)
    async with connected(server.handle) as client:
        started = trio.current_time()
        await client.send(b"DELETE /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        reply = await client.response()
        assert await client.read_until_closed() == b""
        await client.served.wait()  # the client keeps its end open, as a browser may
        assert trio.current_time() - started == 0
    assert reply.status == 405


async def test_response_cut_off_upstream_ends_the_connection_with_the_body_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken(seen: Seen) -> FakeSource:
        return FakeSource(
            headers=[(b"Content-Length", b"10")], chunks=[b"12345"], error=UpstreamError("reset")
        )

    async with connected(connection_loop(EchoRouter(broken), LIMITS)) as client:
        await client.send(GET)
        received = await client.read_until_closed()
    assert status_of(received) == 200
    assert received.endswith(b"\r\n\r\n12345")  # never a complete-looking body


# --- time limits -----------------------------------------------------------------------------


async def test_slow_request_head_is_answered_408_at_the_header_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(connection_loop(EchoRouter(), LIMITS)) as client:
        started = trio.current_time()
        await client.send(b"GET http://files.test/a HTTP/1.1\r\nHost: x\r\n")  # never finished
        reply = await client.response()
        assert trio.current_time() - started == HEADER_TIMEOUT
    assert reply.status == 408


async def test_silent_client_is_closed_without_an_answer_at_the_header_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(connection_loop(EchoRouter(), LIMITS)) as client:
        assert await client.read_until_closed() == b""
        assert trio.current_time() == HEADER_TIMEOUT


async def test_quiet_keep_alive_connection_is_closed_at_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(connection_loop(EchoRouter(), LIMITS)) as client:
        await client.send(GET)
        assert (await client.response()).status == 200
        answered = trio.current_time()
        assert await client.read_until_closed() == b""
        assert trio.current_time() - answered == IDLE_TIMEOUT


async def test_stalled_request_body_is_cut_with_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = EchoRouter()
    async with connected(connection_loop(router, LIMITS)) as client:
        await client.send(POST_100 + b"only this much")
        started = trio.current_time()
        reply = await client.response()
        assert trio.current_time() - started == BODY_TIMEOUT
    assert reply.status == 408
    assert "--body-timeout" in reply.text
    assert router.seen == []  # the handler never saw a complete-looking body


async def test_body_trickled_under_the_minimum_rate_is_cut_with_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def trickle() -> None:
        await client.send(b"POST http://files.test/up HTTP/1.1\r\nHost: x\r\n")
        await client.send(b"Content-Length: 100000\r\n\r\n")
        for _ in range(1000):  # progress every second, far under MIN_BODY_RATE
            await client.send(b"0")
            await trio.sleep(1)

    async with connected(connection_loop(EchoRouter(), LIMITS)) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            reply = await client.response()
            nursery.cancel_scope.cancel()
    assert reply.status == 408
    assert "--min-body-rate" in reply.text
    assert trio.current_time() < 60  # after the first 30 s window, not at the body's end


# --- error answers and the linger ------------------------------------------------------------


async def test_after_an_error_answer_a_still_sending_client_is_read_then_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(connection_loop(EchoRouter(), LIMITS)) as client:
        await client.send(POST_100 + b"x")
        reply = await client.response()
        answered = trio.current_time()
        # Late body bytes are read and dropped (no reset that could destroy the answer)...
        for _ in range(3):
            await trio.sleep(LINGER_SECONDS / 4)
            await client.send(b"y" * 10)
        assert not client.served.is_set()
        # ...until the linger ends.
        await client.served.wait()
        assert trio.current_time() - answered == LINGER_SECONDS
    assert reply.status == 408


@pytest.mark.parametrize(
    "request_head",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET http://files.test:99999/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ftp://files.test/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://[::1/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n",  # TLS hello
    ],
)
async def test_malformed_request_is_400(
    request_head: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    router = EchoRouter()
    async with connected(connection_loop(router, LIMITS)) as client:
        await client.send(request_head)
        reply = await client.response()
    assert reply.status == 400
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text.startswith("transcache: ")
    assert router.seen == []


async def test_oversized_request_head_is_431(autojump_clock: trio.testing.MockClock) -> None:
    async with connected(connection_loop(EchoRouter(), LIMITS)) as client:
        # Still unfinished past the limit (a whole head in one read is parsed regardless).
        await client.send(b"GET /a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
        reply = await client.response()
    assert reply.status == 431


# --- through the whole server ----------------------------------------------------------------


@pytest.mark.parametrize(
    "request_head",
    [b"CONNECT files.test HTTP/1.1\r\nHost: a\r\n\r\n", b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n"],
)
async def test_malformed_connect_is_400(
    tmp_path: Path,
    request_head: bytes,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = proxy_server(tmp_path)
    async with connected(server.handle) as client:
        await client.send(request_head)
        reply = await client.response(b"CONNECT")
    assert reply.status == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_connect_to_a_port_outside_the_allow_list_is_403(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    server = proxy_server(tmp_path)
    async with connected(server.handle) as client:
        await client.send(b"CONNECT files.test:25 HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await client.response(b"CONNECT")
    assert reply.status == 403
    assert "port 25 is not allowed" in reply.text
