"""One client connection's HTTP/1.1 loop, through h11: plain, or inside a CONNECT tunnel's TLS.

The loop reads a request head, hands it to a `Router` (the server decides what answers it),
and starts the next cycle when both sides finished the exchange. Its time limits: the first
head must arrive within header_timeout, later ones within idle_timeout of the last answer;
while the loop waits for a head's first byte, the connection may be closed to make room
(ConnectionSlots). A request body is read through a reader that cuts it when it stalls or
trickles (BodyPace). A response source is streamed one piece at a time, so memory stays flat.

Every failure the client can cause or suffer ends as an error answer with a plain-text reason
(`Client.reject`), or as a closed connection once a response is under way. After an error
answer to a client that may still be sending, the connection lingers before closing.
"""

from __future__ import annotations

import logging
from typing import Protocol

import h11
import trio

from ._access import AccessLog, Exchange
from ._auth import ANONYMOUS, Identity
from ._channel import FILE_CHUNK, READ_SIZE, Channel, FileEndedError
from ._config import Config
from ._errors import (
    BadRequestError,
    HeadersTooLargeError,
    OfflineMissError,
    ProxyError,
    RequestTimeoutError,
)
from ._limits import BodyPace, ConnectionSlots
from ._protocol import (
    Origin,
    header_value,
    parse_target,
    response_headers_for_client,
)
from ._upstream import BodyReader
from .cache import Cache, CacheRequest, Outcome, ResponseSource
from .cache.keys import ecosystem_of
from .cache.sources import StoredResponse

log = logging.getLogger("transcache")

TEXT_PLAIN = b"text/plain; charset=utf-8"
# After an error answer to a client still sending, read (and drop) what it sends for a while
# before closing: closing with unread input makes the kernel send RST, which can destroy the
# answer before the client reads it.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024
# A client in these states has sent all it will (MUST_CLOSE: a whole request with
# `Connection: close`, or HTTP/1.0): there is no unread input to linger for.
CLIENT_DONE_SENDING = frozenset({h11.DONE, h11.MUST_CLOSE, h11.CLOSED})
# Error answers can still be sent while our side is in these states.
CAN_ANSWER = frozenset({h11.IDLE, h11.SEND_RESPONSE})
# What ends a prebuilt head: the field h11 adds when the connection ends after this answer.
HEAD_END = b"\r\n"
CLOSING_HEAD_END = b"Connection: close\r\n\r\n"


class Client:
    """One HTTP/1.1 connection from a client, as the handlers of its requests see it: read
    the body, answer, stream, reject. `tunnel` is the origin of the CONNECT whose TLS this
    connection runs inside, `who` whom that CONNECT's credentials named."""

    def __init__(
        self,
        channel: Channel,
        peer: str,
        config: Config,
        access: AccessLog,
        tunnel: Origin | None = None,
        who: Identity = ANONYMOUS,
    ) -> None:
        self.channel = channel
        self.peer = peer
        self.config = config
        self.access = access
        self.tunnel = tunnel
        self.who = who

    async def read_request_head(
        self, first_byte_timeout: float, slots: ConnectionSlots
    ) -> h11.Request | None:
        """The next request head, or None when the connection should end."""
        channel = self.channel
        try:
            event = channel.conn.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(first_byte_timeout) as idle:
                    # Until a request starts, the connection may be closed to make room.
                    slots.idle(idle)
                    try:
                        await channel.receive_into_buffer()
                    finally:
                        slots.busy(idle)
                if idle.cancelled_caught:
                    return None  # idle, never said anything, or made room: close quietly
                event = channel.conn.next_event()
                if event is h11.NEED_DATA:  # the head came in pieces
                    with trio.fail_after(self.config.header_timeout):
                        while event is h11.NEED_DATA:
                            await channel.receive_into_buffer()
                            event = channel.conn.next_event()
        except h11.RemoteProtocolError as exc:
            error: ProxyError = (
                HeadersTooLargeError("request head too large")
                if exc.error_status_hint == 431
                else BadRequestError(f"malformed request: {exc}")
            )
            await self.reject(Exchange(self.peer, "-"), error)
            return None
        except trio.TooSlowError:
            error = RequestTimeoutError("request head not received in time")
            await self.reject(Exchange(self.peer, "-"), error)
            return None
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed

    def next_cycle(self) -> bool:
        """Get ready for the next request on this connection; False when it must end."""
        conn = self.channel.conn
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        return True

    def body_reader(self) -> BodyReader:
        """The request body, one piece per call (b"" at its end); RequestTimeoutError when
        it stalls or trickles (BodyPace)."""
        pace = BodyPace(self.config.body_timeout, self.config.min_body_rate)
        channel = self.channel

        async def read() -> bytes:
            while True:
                started = trio.current_time()
                event: h11.Event | None = None
                with trio.move_on_after(pace.next_wait()):
                    try:
                        event = await channel.next_event()
                    except h11.RemoteProtocolError as exc:
                        raise BadRequestError(f"malformed request body: {exc}") from exc
                if isinstance(event, h11.EndOfMessage):
                    return b""
                if event is not None and not isinstance(event, h11.Data):
                    raise BadRequestError("request body ended early")
                data = b"" if event is None else bytes(event.data)
                why = pace.record(trio.current_time() - started, len(data))
                if why is not None:
                    raise RequestTimeoutError(why)
                if data:
                    return data

        return read

    async def stream(self, exchange: Exchange, response: ResponseSource) -> None:
        """Send `response` to the client, its body one piece at a time, and close it."""
        if isinstance(response, StoredResponse):
            await self.stream_stored(exchange, response)
            return
        channel = self.channel
        try:
            exchange.status = response.status
            channel.queue(
                h11.Response(
                    status_code=response.status,
                    headers=response_headers_for_client(response.headers),
                    reason=response.reason,
                )
            )
            while True:
                try:
                    chunk = await response.read()
                except ProxyError as error:
                    # Headers are out: the only honest signal left is an incomplete body.
                    log.warning("%s: response cut off: %s", exchange.url, error)
                    await channel.flush()
                    return
                if not chunk:
                    break
                channel.queue(h11.Data(data=chunk))
                await channel.flush()
                exchange.bytes += len(chunk)
            await channel.send(h11.EndOfMessage())
        finally:
            await response.aclose()

    async def stream_stored(self, exchange: Exchange, response: StoredResponse) -> None:
        """Send a stored answer: a small body in one write with its head, a large one in
        large writes (sendfile to a plain client) from the file opened at lookup."""
        channel = self.channel
        exchange.status = response.status
        try:
            head = self._stored_head(response)
            if response.small is not None:
                body = response.small_span()
                channel.count_body(body)
                channel.conn.send(h11.EndOfMessage())
                await channel.stream.send_all(head + body)
                response.sent(len(body))
                exchange.bytes = len(body)
                return
            if response.length <= 0:  # HEAD, 304, 416, an empty body
                await channel.stream.send_all(head)
            buffer = bytearray(FILE_CHUNK + len(head)) if response.length > 0 else bytearray()
            while response.length > 0:
                try:
                    sent = await channel.send_file_span(
                        response.fd, response.start, response.length, buffer, head
                    )
                    head = b""  # sent with the first body bytes
                except FileEndedError as error:
                    # An incomplete answer (the connection closes) is the only honest signal.
                    log.warning("%s: response cut off: stored body %s", exchange.url, error)
                    return
                response.sent(sent)
                exchange.bytes += sent
            channel.conn.send(h11.EndOfMessage())
        finally:
            await response.aclose()

    def _stored_head(self, response: StoredResponse) -> bytes:
        """The head of a stored answer as bytes. A prebuilt one is sent past h11, which is
        shown a head with only its framing (Content-Length), so it still tracks the body's
        length and the connection's state, and says whether the connection ends after this
        answer (it adds Connection: close): the one field the prebuilt head lacks."""
        conn = self.channel.conn
        if response.prebuilt is None:
            return conn.send(
                h11.Response(
                    status_code=response.status,
                    headers=response_headers_for_client(response.headers),
                    reason=response.reason,
                )
            )
        size = response.entry.size
        framing = conn.send(
            h11.Response(status_code=response.status, headers=[(b"Content-Length", b"%d" % size)])
        )
        closing = framing.endswith(b"close\r\n\r\n")
        return response.prebuilt + (CLOSING_HEAD_END if closing else HEAD_END)

    async def answer(
        self,
        exchange: Exchange,
        status: int,
        body: bytes,
        content_type: bytes,
        reason: bytes = b"",
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """A small response made here (admin pages, error answers), never stored."""
        exchange.status = status
        headers = [
            (b"Content-Type", content_type),
            (b"Content-Length", str(len(body)).encode()),
            (b"Cache-Control", b"no-store"),
            *extra,
        ]
        await self.channel.send(h11.Response(status_code=status, headers=headers, reason=reason))
        if exchange.method != "HEAD":
            await self.channel.send(h11.Data(data=body))
            exchange.bytes = len(body)
        await self.channel.send(h11.EndOfMessage())

    async def reject(self, exchange: Exchange, error: ProxyError, *, log_it: bool = True) -> None:
        """Answer with the error's status and reason when a response can still be sent."""
        exchange.status = error.status
        exchange.error = str(error)
        if exchange.outcome is None:
            offline = isinstance(error, OfflineMissError)
            exchange.outcome = Outcome.OFFLINE_MISS if offline else Outcome.ERROR
        if log_it:
            self.access.record(exchange)
        conn = self.channel.conn
        if conn.our_state not in CAN_ANSWER:
            return
        if error.status >= 500:
            log.warning("%s %s: %s", exchange.method, exchange.url, error)
        body = f"transcache: {error}\n".encode()
        try:
            await self.answer(
                exchange, error.status, body, TEXT_PLAIN, error.reason.encode(), error.headers
            )
            if conn.their_state not in CLIENT_DONE_SENDING:
                await _linger(self.channel.stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass


class Router(Protocol):
    """What answers the requests the loop reads (the server's routing)."""

    async def respond(
        self,
        client: Client,
        request: h11.Request,
        origin: Origin | None,
        path: str,
        exchange: Exchange,
    ) -> None:
        """Answer `request` for `path` at `origin` (None: addressed to the proxy itself);
        raise ProxyError to have it rejected."""

    async def connect(self, client: Client, request: h11.Request) -> None:
        """Take over the connection for a CONNECT request; it ends when this returns."""


class ConnectionLoop:
    """Serves client connections: one `serve` call per connection (and per tunnel inside)."""

    def __init__(
        self, config: Config, slots: ConnectionSlots, access: AccessLog, router: Router
    ) -> None:
        self.config = config
        self.slots = slots
        self.access = access
        self.router = router

    async def serve(
        self,
        stream: trio.abc.Stream,
        peer: str,
        tunnel: Origin | None = None,
        who: Identity = ANONYMOUS,
    ) -> None:
        """Answer requests on `stream` until the connection ends (the caller closes it)."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_header_bytes)
        client = Client(Channel(stream, conn), peer, self.config, self.access, tunnel, who)
        wait = self.config.header_timeout
        while True:
            request = await client.read_request_head(wait, self.slots)
            if request is None:
                return
            if request.method == b"CONNECT" and tunnel is None:
                await self.router.connect(client, request)
                return
            await self._respond(client, request)
            if not client.next_cycle():
                return
            wait = self.config.idle_timeout

    async def _respond(self, client: Client, request: h11.Request) -> None:
        exchange = Exchange(
            client.peer, request.method.decode("ascii", "replace"), started=trio.current_time()
        )
        exchange.tag, exchange.user = client.who.tag, client.who.user
        try:
            target = parse_target(request.target)
            origin = target.origin or client.tunnel
            await self.router.respond(client, request, origin, target.path, exchange)
        except ProxyError as error:
            await client.reject(exchange, error, log_it=False)
        finally:
            self.access.record(exchange)


class Forwarder:
    """Answers a request for an origin: hands it to the cache, which decides everything
    (from the disk, upstream, or not at all), and streams what comes back."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    async def forward(
        self,
        client: Client,
        request: h11.Request,
        origin: Origin,
        path: str,
        exchange: Exchange,
    ) -> None:
        channel = client.channel
        raw = list(request.headers.raw_items())
        body: BodyReader | None = None
        if header_value(raw, b"transfer-encoding") is None and header_value(
            raw, b"content-length"
        ) in (None, b"0"):
            # No body: h11 has its EndOfMessage ready, so no read and no body timer.
            end = channel.conn.next_event()
            assert isinstance(end, h11.EndOfMessage), end
        else:
            body = client.body_reader()
        if channel.conn.they_are_waiting_for_100_continue:
            await channel.send(h11.InformationalResponse(status_code=100, headers=[]))
        cache_request = CacheRequest(request.method, origin, path, raw, body)
        exchange.ecosystem = ecosystem_of(cache_request)
        source, exchange.outcome = await self.cache.respond(cache_request)
        if isinstance(source, StoredResponse):
            exchange.saved_seconds = source.entry.fetch_seconds
        await client.stream(exchange, source)


async def _linger(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(LINGER_SECONDS):
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        drained = 0
        while drained < LINGER_BYTES and (data := await stream.receive_some(READ_SIZE)):
            drained += len(data)
