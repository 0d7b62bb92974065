"""The upstream keep-alive pool, against a loopback origin: which idle connections it keeps,
and that it lets go of them, whatever origins are asked next."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from transcache._config import Config
from transcache._idle import MAX_IDLE_PER_ORIGIN, POOL_IDLE_SECONDS, IdleConnections
from transcache._protocol import Origin
from transcache._upstream import UpstreamPool

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEAD_END = b"\r\n\r\n"
WAIT = 10.0  # seconds (real ones, on this clock) the origin may take to see a close


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Time runs as usual (the origin's bytes come over real sockets), and a test can jump it.
    return trio.testing.MockClock(rate=1.0)


@dataclass
class KeepAliveOrigin:
    """Answers every request with `ANSWER` and keeps the connection open; `closed` holds an
    event per connection, in the order they came, set once the pool closed it."""

    closed: list[trio.Event] = field(default_factory=list)

    async def serve(self, stream: trio.SocketStream) -> None:
        closed = trio.Event()
        self.closed.append(closed)
        received = b""
        try:
            async for data in stream:
                received += data
                while HEAD_END in received:
                    _, _, received = received.partition(HEAD_END)
                    await stream.send_all(ANSWER)
        finally:
            closed.set()


@dataclass(eq=False)
class Pooled:
    origin: Origin
    idle_since: float = 0.0


def test_a_sweep_hands_back_the_expired_connections_of_every_origin() -> None:
    idle: IdleConnections[Pooled] = IdleConnections()
    old = [Pooled(Origin("https", f"o{number}.test", 443)) for number in range(1000)]
    assert all(idle.put(connection, 0.0) for connection in old)
    assert idle.sweep(0.0) == []  # none expired yet
    fresh = Pooled(Origin("https", "fresh.test", 443))
    idle.put(fresh, POOL_IDLE_SECONDS)

    assert idle.sweep(POOL_IDLE_SECONDS) == old
    assert idle.drain() == [fresh]


def test_the_sweep_looks_at_most_once_per_idle_period() -> None:
    idle: IdleConnections[Pooled] = IdleConnections()
    idle.sweep(0.0)
    connection = Pooled(Origin("https", "a.test", 443))
    idle.put(connection, 1.0)
    assert idle.sweep(POOL_IDLE_SECONDS) == []  # a sweep, but the connection is not expired
    assert idle.sweep(POOL_IDLE_SECONDS + 10) == []  # expired, but swept just now
    assert idle.sweep(2 * POOL_IDLE_SECONDS) == [connection]


def test_an_origin_keeps_at_most_its_share_newest_first() -> None:
    idle: IdleConnections[Pooled] = IdleConnections()
    origin = Origin("https", "a.test", 443)
    kept = [Pooled(origin) for _ in range(MAX_IDLE_PER_ORIGIN)]
    assert all(idle.put(connection, float(n)) for n, connection in enumerate(kept))
    assert not idle.put(Pooled(origin), 40.0)
    now = POOL_IDLE_SECONDS + 1.5  # the first two expired
    taken, expired = idle.take(origin, now)
    assert taken is kept[-1] and expired == []
    assert idle.drain() == kept[:-1]


async def fetch(pool: UpstreamPool, origin: Origin) -> None:
    response = await pool.request(origin, b"GET", b"/", [(b"Host", origin.host.encode())], None)
    assert response.status == 200
    while await response.read():
        pass


async def test_idle_connections_to_origins_not_asked_again_are_closed(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    origin = KeepAliveOrigin()
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, origin.serve, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    hosts = [f"o{number}.test" for number in range(4)]
    pool = UpstreamPool(Config(resolve={(host, port): "127.0.0.1" for host in hosts}))
    for host in hosts[:3]:
        await fetch(pool, Origin("http", host, port))
    assert len(origin.closed) == 3
    assert not any(closed.is_set() for closed in origin.closed)  # kept for the next request

    clock.jump(POOL_IDLE_SECONDS + 1)
    await fetch(pool, Origin("http", hosts[3], port))

    # The three expired while the pool served another origin; nobody asks for theirs again.
    with trio.fail_after(WAIT):
        for closed in origin.closed[:3]:
            await closed.wait()
    assert not origin.closed[3].is_set()
    await pool.aclose()
