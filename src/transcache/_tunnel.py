"""CONNECT: answered 200, then either spliced blind to the origin (passthrough hosts) or
TLS-terminated with a leaf for the host and served as a nested HTTP/1.1 loop whose
origin-form requests go to ``https://host:port``.

A client that rejects our leaf is reported (see _rejections), never acted on: one
misconfigured tool must not change what other clients get.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

import h11
import trio

from ._access import Exchange
from ._admin import ADMIN_HOST
from ._auth import ANONYMOUS, Gate, Identity
from ._ca import CAError, CertificateAuthority, InvalidHostError
from ._channel import PrefixedStream, splice
from ._config import Config
from ._connection import Client
from ._errors import BadRequestError, ForbiddenError, ProxyError
from ._paths import BUNDLE_NAME
from ._protocol import Origin, parse_authority
from ._rejections import LeafRejections, fix_for, peer_program
from ._upstream import UpstreamPool

log = logging.getLogger("transcache")

# TLS alerts by which a client says it does not trust our certificate (pinning, its own store).
CERT_REJECTED_ALERTS = frozenset(
    {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"}
)
CONNECTION_ESTABLISHED = h11.Response(status_code=200, headers=[], reason=b"Connection established")

# Serves HTTP/1.1 inside a terminated tunnel: (TLS stream, peer, origin, client tag).
ServeInside = Callable[[trio.abc.Stream, str, Origin, Identity], Awaitable[None]]


class Tunnels:
    """Handles CONNECT requests; `serve_inside` runs the HTTP loop inside the TLS."""

    def __init__(
        self,
        config: Config,
        ca: CertificateAuthority,
        pool: UpstreamPool,
        rejections: LeafRejections,
        gate: Gate,
        serve_inside: ServeInside,
    ) -> None:
        self.config = config
        self.ca = ca
        self.pool = pool
        self.rejections = rejections
        self.gate = gate
        self.serve_inside = serve_inside

    async def connect(self, client: Client, request: h11.Request) -> None:
        channel = client.channel
        peer = client.peer
        exchange = Exchange(
            peer, "CONNECT", request.target.decode("ascii", "replace"), started=trio.current_time()
        )
        try:
            who = self.gate.proxy(list(request.headers.raw_items()), ANONYMOUS)
            exchange.tag, exchange.user = who.tag, who.user
            host, port = parse_authority(request.target)
            refusal = self.config.port_refusal("https", host, port)
            if refusal is not None and host != ADMIN_HOST:
                raise ForbiddenError(refusal)
            origin = Origin("https", host, port)
            await client.body_reader()()  # CONNECT carries no body
            if host != ADMIN_HOST and self.config.is_passthrough(host):
                upstream = await self.pool.open_tcp(origin)  # errors answered below
                exchange.status = 200
                try:
                    exchange.bytes = await self._splice(client, upstream)
                finally:
                    client.access.record(exchange)
                return
            try:
                context = self.ca.server_context(host)
            except InvalidHostError as exc:
                raise BadRequestError(str(exc)) from exc
            except CAError as exc:
                raise ProxyError(f"cannot mint a certificate for {host}: {exc}") from exc
            await channel.send(CONNECTION_ESTABLISHED)
        except ProxyError as error:
            await client.reject(exchange, error)
            return
        prefix, _ = channel.conn.trailing_data
        transport = PrefixedStream(channel.stream, prefix) if prefix else channel.stream
        tls = trio.SSLStream(transport, context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(self.config.header_timeout):
                await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            client.access.handshake(ok=False)
            await self._handshake_failed(channel.stream, peer, host, exc.__cause__)
            return
        except trio.TooSlowError:
            client.access.handshake(ok=False)
            log.info("%s: TLS handshake for %s timed out", peer, host)
            return
        client.access.handshake(ok=True)
        _ack_now(channel.stream)
        try:
            await self.serve_inside(tls, peer, origin, who)
        finally:
            await trio.aclose_forcefully(tls)

    async def _splice(self, client: Client, upstream: trio.SocketStream) -> int:
        """Passthrough: bytes both ways, unread; returns how many moved."""
        channel = client.channel
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
        if self.rejections.worth_looking_up(host):
            program = await trio.to_thread.run_sync(peer_program, _loopback_peer(stream))
        if self.rejections.record(host, program, peer.rpartition(":")[0]):
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


def _loopback_peer(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The client's (address, port) when it is on this machine, else None."""
    if not isinstance(stream, trio.SocketStream):
        return None
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return None
    return (host, port) if ipaddress.ip_address(host).is_loopback else None


def _ack_now(stream: trio.abc.Stream) -> None:
    """Acknowledge the client's last handshake segment now rather than after the delayed-ACK
    timer: a client without TCP_NODELAY holds its first request behind that ACK (Nagle), which
    costs ~40 ms on every new tunnel. Linux only; elsewhere a no-op."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None and isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, quickack, 1)
