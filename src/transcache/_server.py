"""The proxy server: one trio task per client connection, speaking HTTP/1.1 through h11.

A connection starts in plain HTTP. Each request is one of:
- ``CONNECT host:port``: answered 200, then either spliced blind to the origin (passthrough
  hosts) or TLS-terminated with a leaf for `host` and served as a nested keep-alive loop whose
  origin-form requests go to ``https://host:port``;
- an absolute-form ``http://`` (or ``https://``) request: forwarded to that origin;
- an origin-form request: addressed to the proxy itself (``/healthz``, ``/ca.pem``).

Every failure the client can cause or suffer ends as an HTTP status with a plain-text reason
(ProxyError), or as a closed connection once a response is under way; nothing a client sends
can end the server or leave a task behind. Bodies stream in both directions, one read at a
time, so memory stays flat whatever their size.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import resource
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import h11
import trio

from ._ca import CAError, CertificateAuthority, InvalidHostError
from ._cache import Annotated, Cache, Outcome, ResponseSource
from ._channel import READ_SIZE, Channel, PrefixedStream, splice
from ._config import Config
from ._errors import (
    BadRequestError,
    ForbiddenError,
    HeadersTooLargeError,
    MethodNotAllowedError,
    OfflineMissError,
    PayloadTooLargeError,
    ProxyError,
    RequestTimeoutError,
)
from ._git import MAX_DECODED_BODY, is_ref_discovery_get, is_upload_pack_post
from ._limits import BodyPace, ConnectionSlots, default_max_connections
from ._paths import BUNDLE_NAME
from ._policy import cache_status, request_bypasses_cache
from ._protocol import (
    Headers,
    Origin,
    header_value,
    parse_authority,
    parse_target,
    request_headers_for_upstream,
    response_headers_for_client,
)
from ._rejections import LeafRejections, fix_for, peer_program
from ._stats import ProxyStats, tag_from
from ._upstream import BodyReader, UpstreamPool
from .install import doctor_pages
from .store import Store

log = logging.getLogger("transcache")
access_log = logging.getLogger("transcache.access")

# TLS alerts by which a client says it does not trust our certificate (pinning, its own store).
CERT_REJECTED_ALERTS = frozenset(
    {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"}
)
ADMIN_METHODS = frozenset({b"GET", b"HEAD"})
# A name that never resolves (RFC 6761 .invalid): a client reaches it only through the proxy,
# which answers it itself, so fetching https://transcache.invalid/healthz proves a client
# uses the proxy and trusts its CA.
ADMIN_HOST = "transcache.invalid"
TEXT_PLAIN = b"text/plain; charset=utf-8"
APPLICATION_JSON = b"application/json"
# Clients that rejected our leaf, per host, as JSON (read by `status` and `doctor`).
REJECTIONS_PAGE = "/tls-rejections"
# An admin page: server -> (status, content type, body).
AdminPage = Callable[["ProxyServer"], tuple[int, bytes, bytes]]
# After an error answer to a client still sending, read (and drop) what it sends for a while
# before closing: closing with unread input makes the kernel send RST, which can destroy the
# answer before the client reads it.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024
# git request bodies are read whole to be keyed; no real fetch negotiation comes near this.
MAX_GIT_REQUEST_BYTES = MAX_DECODED_BODY
CONNECTION_ESTABLISHED = h11.Response(status_code=200, headers=[], reason=b"Connection established")
# The fd count assumed when the limit is "unlimited" (some macOS setups).
UNLIMITED_FDS = 10240
# accept() failures that mean "out of descriptors or memory for now", not a broken listener.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# Pause between accept attempts while descriptors are exhausted (trio's serve_listeners
# waits as long, but logs a traceback at every attempt).
ACCEPT_BACKOFF_SECONDS = 0.1


@dataclass
class _Exchange:
    """What the access log says about one request."""

    peer: str
    method: str
    url: str = "-"
    status: int = 0
    bytes: int = 0
    cache: str = "-"
    tag: str | None = None
    offline_miss: bool = False


class ProxyServer:
    def __init__(
        self, config: Config, ca: CertificateAuthority, store: Store | None = None
    ) -> None:
        self.config = config
        self.ca = ca
        self.pool = UpstreamPool(config)
        self.cache = Cache(config, store, self.pool) if store is not None else None
        self.stats = ProxyStats()
        self.slots = ConnectionSlots(config.max_connections or default_max_connections(_fd_limit()))
        # Clients that refused our leaf: reported, never acted on (see _rejections).
        self.leaf_rejections = LeafRejections()
        self.listeners: list[trio.SocketListener] = []
        # The proxy's own pages, by path: served to origin-form requests and to requests for
        # ADMIN_HOST (directly or through CONNECT, which then needs our CA: a trust check).
        self.admin_pages: dict[str, AdminPage] = {
            "/healthz": lambda server: (200, TEXT_PLAIN, b"ok\n"),
            "/ca.pem": lambda server: (200, b"application/x-pem-file", server.ca.cert_pem),
            REJECTIONS_PAGE: lambda server: (
                200,
                APPLICATION_JSON,
                json.dumps(server.leaf_rejections.to_json()).encode(),
            ),
        }
        doctor_pages.register(self.admin_pages)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the first listener: the real port when 0 was asked for."""
        sockname = self.listeners[0].socket.getsockname()
        return sockname[0], sockname[1]

    async def serve(
        self,
        listeners: list[trio.SocketListener] | None = None,
        *,
        task_status: trio.TaskStatus[ProxyServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled; report `self` once listening."""
        if listeners is None:
            listeners = await trio.open_tcp_listeners(
                self.config.listen_port, host=self.config.listen_host
            )
        self.listeners = listeners
        try:
            async with trio.open_nursery() as nursery:
                if self.cache is not None:
                    await nursery.start(self.cache.run)
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, nursery)
                task_status.started(self)
        finally:
            await self.pool.aclose()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept connections until cancelled, each served in its own task in `nursery`.

        Past the connection cap, an idle connection is closed to make room (ConnectionSlots)
        or, when all are busy, the newcomer is answered 503 at once. When accept() itself fails
        for want of descriptors, wait a little and retry, saying so once per episode."""
        starved = 0
        refusing = False
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    if not starved:
                        log.warning(
                            "cannot accept connections: %s (%s) with %d client connections "
                            "open; retrying every %g s (raise the fd limit or lower "
                            "--max-connections)",
                            errno.errorcode[exc.errno],
                            exc.strerror,
                            self.slots.count,
                            ACCEPT_BACKOFF_SECONDS,
                        )
                    starved += 1
                    await trio.sleep(ACCEPT_BACKOFF_SECONDS)
                    continue
                if starved:
                    log.info("accepting connections again after %d failed attempts", starved)
                    starved = 0
                if self.slots.admit():
                    refusing = False
                    nursery.start_soon(self._serve_connection, stream)
                    continue
                if not refusing:
                    log.warning(
                        "%d client connections, all busy: answering newcomers 503 "
                        "(--max-connections)",
                        self.slots.limit,
                    )
                    refusing = True
                _turn_away(stream, self.slots.limit)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            await self.handle(stream)
        finally:
            self.slots.release()

    async def handle(self, stream: trio.abc.Stream) -> None:
        peer = _peer_name(stream)
        try:
            await self._serve_http(stream, peer, tunnel=None, tag=None)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to tell it
        except Exception:
            log.exception("unexpected error while serving %s", peer)
        finally:
            await trio.aclose_forcefully(stream)

    # -- the HTTP loop -----------------------------------------------------------------------

    async def _serve_http(
        self, stream: trio.abc.Stream, peer: str, tunnel: Origin | None, tag: str | None
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_header_bytes)
        channel = Channel(stream, conn)
        wait = self.config.header_timeout
        while True:
            request = await self._read_request_head(channel, peer, wait)
            if request is None:
                return
            if request.method == b"CONNECT" and tunnel is None:
                await self._connect(channel, request, peer, tag_from(request.headers.raw_items()))
                return
            await self._respond(channel, request, peer, tunnel, tag)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
            wait = self.config.idle_timeout

    async def _read_request_head(
        self, channel: Channel, peer: str, first_byte_timeout: float
    ) -> h11.Request | None:
        """The next request head, or None when the connection should end."""
        try:
            event = channel.conn.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(first_byte_timeout) as idle:
                    # Until a request starts, the connection may be closed to make room.
                    self.slots.idle(idle)
                    try:
                        await channel.receive_into_buffer()
                    finally:
                        self.slots.busy(idle)
                if idle.cancelled_caught:
                    return None  # idle, never said anything, or made room: close quietly
                event = channel.conn.next_event()
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
            await self._reject(channel, _Exchange(peer, "-"), error)
            return None
        except trio.TooSlowError:
            error = RequestTimeoutError("request head not received in time")
            await self._reject(channel, _Exchange(peer, "-"), error)
            return None
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed

    async def _respond(
        self,
        channel: Channel,
        request: h11.Request,
        peer: str,
        tunnel: Origin | None,
        tunnel_tag: str | None,
    ) -> None:
        exchange = _Exchange(peer, request.method.decode("ascii", "replace"))
        exchange.tag = tag_from(list(request.headers.raw_items())) or tunnel_tag
        started = trio.current_time()
        try:
            target = parse_target(request.target)
            origin = target.origin or tunnel
            if origin is None or origin.host == ADMIN_HOST:
                exchange.url = target.path
                await self._admin(channel, request, target.path, exchange)
            else:
                exchange.url = origin.url(target.path)
                await self._forward(channel, request, origin, target.path, exchange)
        except ProxyError as error:
            exchange.offline_miss = isinstance(error, OfflineMissError)
            await self._reject(channel, exchange, error, log_it=False)
        finally:
            self._log_access(exchange, started)

    def _body_reader(self, channel: Channel) -> BodyReader:
        """The request body, one piece per call (b"" at its end); RequestTimeoutError when
        it stalls or trickles (BodyPace)."""
        pace = BodyPace(self.config.body_timeout, self.config.min_body_rate)

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

    async def _forward(
        self,
        channel: Channel,
        request: h11.Request,
        origin: Origin,
        path: str,
        exchange: _Exchange,
    ) -> None:
        raw = list(request.headers.raw_items())
        read_body = self._body_reader(channel)
        body: BodyReader | None = read_body
        if header_value(raw, b"transfer-encoding") is None and header_value(
            raw, b"content-length"
        ) in (None, b"0"):
            body = None
            await read_body()  # h11's EndOfMessage, already buffered
        if channel.conn.they_are_waiting_for_100_continue:
            await channel.send(h11.InformationalResponse(status_code=100, headers=[]))
        response: ResponseSource
        git = self.cache is not None and _is_git_request(request.method, path, raw)
        if self.cache is not None and (
            git or (body is None and not request_bypasses_cache(request.method, raw))
        ):
            # git requests are keyed on their body, so it is read whole first.
            whole = await _read_whole(read_body) if git and body is not None else None
            outcome = Outcome()
            try:
                response = await self.cache.respond(
                    request.method, origin, path, raw, outcome, git=git, body=whole
                )
            finally:
                exchange.cache = outcome.label
        elif self.config.offline:
            raise OfflineMissError(f"offline: {exchange.url} cannot be answered from the cache")
        else:
            headers = request_headers_for_upstream(raw, origin)
            response = await self.pool.request(origin, request.method, path.encode(), headers, body)
            if self.cache is not None:
                why = "method" if request.method not in (b"GET", b"HEAD") else "request"
                response = Annotated(response, [(b"Cache-Status", cache_status(why))])
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

    # -- CONNECT -----------------------------------------------------------------------------

    async def _connect(
        self, channel: Channel, request: h11.Request, peer: str, tag: str | None
    ) -> None:
        exchange = _Exchange(peer, "CONNECT", request.target.decode("ascii", "replace"))
        exchange.tag = tag
        started = trio.current_time()
        try:
            host, port = parse_authority(request.target)
            refusal = self.config.port_refusal("https", host, port)
            if refusal is not None and host != ADMIN_HOST:
                raise ForbiddenError(refusal)
            origin = Origin("https", host, port)
            await self._body_reader(channel)()  # CONNECT carries no body
            if host != ADMIN_HOST and self.config.is_passthrough(host):
                upstream = await self.pool.open_tcp(origin)  # errors answered below
                exchange.status = 200
                try:
                    exchange.bytes = await self._tunnel(channel, upstream)
                finally:
                    self._log_access(exchange, started)
                return
            try:
                context = self.ca.server_context(host)
            except InvalidHostError as exc:
                raise BadRequestError(str(exc)) from None
            except CAError as exc:
                raise ProxyError(f"cannot mint a certificate for {host}: {exc}") from None
            await channel.send(CONNECTION_ESTABLISHED)
        except ProxyError as error:
            await self._reject(channel, exchange, error)
            return
        prefix, _ = channel.conn.trailing_data
        transport = PrefixedStream(channel.stream, prefix) if prefix else channel.stream
        tls = trio.SSLStream(transport, context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(self.config.header_timeout):
                await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            await self._handshake_failed(channel.stream, peer, host, exc.__cause__)
            return
        except trio.TooSlowError:
            log.info("%s: TLS handshake for %s timed out", peer, host)
            return
        _ack_now(channel.stream)
        try:
            await self._serve_http(tls, peer, tunnel=origin, tag=tag)
        finally:
            await trio.aclose_forcefully(tls)

    async def _tunnel(self, channel: Channel, upstream: trio.SocketStream) -> int:
        try:
            await channel.send(CONNECTION_ESTABLISHED)
            prefix, _ = channel.conn.trailing_data
            if prefix:
                await upstream.send_all(prefix)
            return len(prefix) + await splice(channel.stream, upstream)
        finally:
            await trio.aclose_forcefully(upstream)

    async def _handshake_failed(
        self, stream: trio.abc.Stream, peer: str, host: str, cause: BaseException | None
    ) -> None:
        reason = cause.reason if isinstance(cause, ssl.SSLError) else None
        if reason not in CERT_REJECTED_ALERTS:
            log.info("%s: TLS handshake for %s failed: %s", peer, host, cause)
            return
        program = None
        if self.leaf_rejections.worth_looking_up(host):
            program = await trio.to_thread.run_sync(peer_program, _loopback_peer(stream))
        if self.leaf_rejections.record(host, program or peer.rpartition(":")[0]):
            log.warning(
                "%s (%s) rejected the transcache certificate for %s (%s): it does not trust "
                "the transcache CA, so its requests fail; other clients are not affected. "
                "Fix: %s",
                program or "a client",
                peer,
                host,
                reason,
                fix_for(program, self.config.ca_dir / BUNDLE_NAME),
            )

    # -- responses from the proxy itself -----------------------------------------------------

    async def _admin(
        self, channel: Channel, request: h11.Request, path: str, exchange: _Exchange
    ) -> None:
        await self._body_reader(channel)()
        if request.method not in ADMIN_METHODS:
            raise MethodNotAllowedError(f"{exchange.method} is not supported here")
        page = self.admin_pages.get(path.partition("?")[0])
        if page is None:
            body = f"transcache: no page {path!r}; try /healthz or /ca.pem\n".encode()
            await self._simple(channel, exchange, 404, body, TEXT_PLAIN)
            return
        status, content_type, body = page(self)
        await self._simple(channel, exchange, status, body, content_type)

    async def _simple(
        self,
        channel: Channel,
        exchange: _Exchange,
        status: int,
        body: bytes,
        content_type: bytes,
        reason: bytes = b"",
    ) -> None:
        exchange.status = status
        headers = [
            (b"Content-Type", content_type),
            (b"Content-Length", str(len(body)).encode()),
            (b"Cache-Control", b"no-store"),
        ]
        await channel.send(h11.Response(status_code=status, headers=headers, reason=reason))
        if exchange.method != "HEAD":
            await channel.send(h11.Data(data=body))
            exchange.bytes = len(body)
        await channel.send(h11.EndOfMessage())

    async def _reject(
        self, channel: Channel, exchange: _Exchange, error: ProxyError, *, log_it: bool = True
    ) -> None:
        """Answer with the error's status and reason when a response can still be sent."""
        exchange.status = error.status
        if log_it:
            self._log_access(exchange, None)
        if channel.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        if error.status >= 500:
            log.warning("%s %s: %s", exchange.method, exchange.url, error)
        body = f"transcache: {error}\n".encode()
        try:
            await self._simple(
                channel,
                exchange,
                error.status,
                body,
                TEXT_PLAIN,
                error.reason.encode(),
            )
            if channel.conn.their_state is not h11.DONE:
                await _linger(channel.stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass

    def _log_access(self, exchange: _Exchange, started: float | None) -> None:
        seconds = 0.0 if started is None else trio.current_time() - started
        if exchange.method != "CONNECT":
            self.stats.record(
                exchange.tag,
                exchange.url,
                exchange.status,
                exchange.bytes,
                seconds,
                exchange.cache,
                exchange.offline_miss,
            )
        elapsed = "-" if started is None else f"{seconds * 1000:.0f}ms"
        access_log.info(
            "%s %s %s %d %d %s %s",
            exchange.peer,
            exchange.method,
            exchange.url,
            exchange.status,
            exchange.bytes,
            elapsed,
            exchange.cache,
        )


async def _linger(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(LINGER_SECONDS):
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        drained = 0
        while drained < LINGER_BYTES and (data := await stream.receive_some(READ_SIZE)):
            drained += len(data)


def _loopback_peer(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The client's (address, port) when it is on this machine, else None."""
    if not isinstance(stream, trio.SocketStream):
        return None
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return None
    return (host, port) if ipaddress.ip_address(host).is_loopback else None


def _fd_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else UNLIMITED_FDS


def _turn_away(stream: trio.SocketStream, limit: int) -> None:
    """Answer 503 and close, without a task or a wait: a new socket's send buffer takes the
    few bytes, and reading what the client already sent keeps the close from becoming a reset
    that could destroy the answer before the client reads it."""
    body = (
        f"transcache: all {limit} client connections are busy (--max-connections); "
        "try again shortly\n"
    ).encode()
    answer = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
    ) % (len(body), body)
    fd = stream.socket.fileno()
    with contextlib.suppress(OSError):  # the socket is non-blocking: nothing here waits
        os.write(fd, answer)
        stream.socket.shutdown(socket.SHUT_WR)
        os.read(fd, READ_SIZE)
    stream.socket.close()


def _peer_name(stream: trio.abc.Stream) -> str:
    if not isinstance(stream, trio.SocketStream):
        return "-"
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "-"
    return f"{host}:{port}"


async def _read_whole(read: BodyReader) -> bytes:
    """A request body read into memory (git requests: small, and keyed on their bytes)."""
    parts = []
    size = 0
    while chunk := await read():
        size += len(chunk)
        if size > MAX_GIT_REQUEST_BYTES:
            raise PayloadTooLargeError(
                f"git request body larger than {MAX_GIT_REQUEST_BYTES} bytes"
            )
        parts.append(chunk)
    return b"".join(parts)


def _ack_now(stream: trio.abc.Stream) -> None:
    """Acknowledge the client's last handshake segment now rather than after the delayed-ACK
    timer: a client without TCP_NODELAY holds its first request behind that ACK (Nagle), which
    costs ~40 ms on every new tunnel. Linux only; elsewhere a no-op."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None and isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, quickack, 1)


def _is_git_request(method: bytes, path: str, headers: Headers) -> bool:
    """git smart HTTP: ref discovery, or an upload-pack POST (keyed on its body)."""
    verb = method.decode("ascii", "replace")
    content_type = header_value(headers, b"content-type")
    return is_ref_discovery_get(verb, path) or is_upload_pack_post(
        verb, path, content_type.decode("latin-1") if content_type else None
    )
