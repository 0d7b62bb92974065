"""The in-process test tier: drive anything that serves one client stream (`ProxyServer.handle`,
`ConnectionLoop.serve`) over trio memory streams, without sockets or subprocesses. With
pytest-trio's `autojump_clock` fixture every timeout runs on virtual time: a test that waits
out a 30 s limit takes milliseconds, and `trio.current_time()` says how long the server took.

    async with connected(server.handle) as client:
        await client.send(b"GET /healthz HTTP/1.1\\r\\nHost: p\\r\\n\\r\\n")
        reply = await client.response()
        assert reply.status == 200 and reply.body == b"ok\\n"

A request goes out as raw bytes (so a test can send anything, malformed included); the answer
is parsed by an h11 client, one `response()` per request, keep-alive and pipelining included.

To test the connection loop alone, `connection_loop(router, config)` builds one as the server
does, with a `Router` of the test's choosing: `EchoRouter` reads each request's body through
the loop's paced reader and answers with a `FakeSource` (a scripted response source: what the
cache or the upstream pool would hand the loop to stream). `proxy_server(tmp_path, ...)`
builds a whole ProxyServer (routing, admin pages, tunnels) for `connected(server.handle)`.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import trio
import trio.testing

from transcache._access import AccessLog, Exchange
from transcache._ca import CertificateAuthority
from transcache._config import Config
from transcache._connection import Client as ClientConnection
from transcache._connection import ConnectionLoop, Router
from transcache._errors import MethodNotAllowedError, ProxyError
from transcache._limits import ConnectionSlots
from transcache._protocol import Headers, Origin
from transcache._server import ProxyServer
from transcache._stats import ProxyStats
from transcache.cache import ResponseSource
from transcache.store import Store

# What serves the proxy's end of one client connection until it is done.
Serve = Callable[[trio.abc.Stream], Awaitable[object]]


@dataclass(frozen=True)
class Reply:
    """One response as the client saw it (header names lower-case)."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Client:
    """The client's end of an in-memory connection to the proxy."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        # Set once the proxy is done with the connection (its serving task returned): the
        # client may see the end of the stream earlier, while the proxy still lingers.
        self.served = trio.Event()
        self._unread = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self, method: bytes = b"GET") -> Reply:
        """The next whole response (to a `method` request, which decides whether it has a
        body); ConnectionError if the proxy closes the connection first."""
        parser = h11.Connection(h11.CLIENT)
        # h11 parses a response only after a request: give it one, and drop its bytes.
        parser.send(h11.Request(method=method, target=b"/", headers=[(b"Host", b"p")]))
        parser.send(h11.EndOfMessage())
        if self._unread:  # b"" would tell h11 that the connection ended
            parser.receive_data(self._unread)
        head: h11.Response | None = None
        body = bytearray()
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                parser.receive_data(bytes(await self.stream.receive_some()))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the proxy closed the connection before a response")
        assert head is not None
        self._unread = bytes(parser.trailing_data[0])
        headers = {name.decode().lower(): value.decode() for name, value in head.headers}
        return Reply(head.status_code, headers, bytes(body))

    async def read_until_closed(self) -> bytes:
        """Everything the proxy sends until it closes the connection."""
        data = bytearray(self._unread)
        self._unread = b""
        while chunk := await self.stream.receive_some():
            data += chunk
        return bytes(data)


@asynccontextmanager
async def connected(serve: Serve) -> AsyncIterator[Client]:
    """A client connected to `serve`, which runs in the background for the block; whatever
    it still does at the end of the block is cancelled."""
    client_end, proxy_end = trio.testing.memory_stream_pair()
    client = Client(client_end)

    async def run() -> None:
        try:
            await serve(proxy_end)
        finally:
            await trio.aclose_forcefully(proxy_end)  # as the server's connection task does
            client.served.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield client
        nursery.cancel_scope.cancel()


class FakeSource:
    """A scripted response source: `chunks` are read one per call, each after `delay`
    seconds; `error`, when given, is raised instead of the end of the body."""

    def __init__(
        self,
        status: int = 200,
        chunks: Sequence[bytes] = (b"hello\n",),
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        delay: float = 0.0,
        error: ProxyError | None = None,
    ) -> None:
        self.status = status
        self.reason = b""
        length = sum(len(chunk) for chunk in chunks)
        self.headers: Headers = [*headers] or [(b"Content-Length", str(length).encode())]
        self._chunks = list(chunks)
        self._delay = delay
        self._error = error
        self.closed = False

    async def read(self) -> bytes:
        await trio.sleep(self._delay)
        if self._chunks:
            return self._chunks.pop(0)
        if self._error is not None:
            raise self._error
        return b""

    async def aclose(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Seen:
    """A request as a router saw it, its body read whole."""

    method: bytes
    origin: Origin | None
    path: str
    body: bytes


def echo(seen: Seen) -> ResponseSource:
    return FakeSource(chunks=[b"%s %s %d\n" % (seen.method, seen.path.encode(), len(seen.body))])


@dataclass
class EchoRouter:
    """A Router that reads each request's body (through the loop's paced reader), records it
    in `seen`, and streams `answer(seen)`: by default "<METHOD> <path> <body length>\n".
    CONNECT is answered 405."""

    answer: Callable[[Seen], ResponseSource] = echo
    seen: list[Seen] = field(default_factory=list)

    async def respond(
        self,
        client: ClientConnection,
        request: h11.Request,
        origin: Origin | None,
        path: str,
        exchange: Exchange,
    ) -> None:
        read = client.body_reader()
        body = bytearray()
        while chunk := await read():
            body += chunk
        seen = Seen(request.method, origin, path, bytes(body))
        self.seen.append(seen)
        await client.stream(exchange, self.answer(seen))

    async def connect(self, client: ClientConnection, request: h11.Request) -> None:
        await client.reject(Exchange(client.peer, "CONNECT"), MethodNotAllowedError("no tunnels"))


def connection_loop(router: Router, config: Config | None = None) -> Serve:
    """What serves one connection with `router` answering its requests (the loop as the server
    builds it), ready for `connected`."""
    config = config or Config()
    loop = ConnectionLoop(config, ConnectionSlots(limit=16), AccessLog(ProxyStats()), router)
    return functools.partial(loop.serve, peer="127.0.0.1:1")


def proxy_server(tmp_path: Path, *, cache: bool = False, **options: Any) -> ProxyServer:
    """A whole ProxyServer, its CA (and with `cache`, its store) under `tmp_path`; `options`
    are Config fields."""
    config = Config(ca_dir=tmp_path / "ca", cache_dir=tmp_path / "cache", **options)
    store = Store(config.cache_dir, config.max_size) if cache else None
    return ProxyServer(config, CertificateAuthority.load_or_create(config.ca_dir), store)
