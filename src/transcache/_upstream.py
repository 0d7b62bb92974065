"""Connections to origins: a keep-alive pool per (scheme, host, port), TLS verified against the
system roots plus configured extra CAs, and every transport or protocol failure translated once,
here, into a ProxyError that says what went wrong (502 / 504).

The pool decides state synchronously (take an idle connection, put one back) and does I/O
outside those decisions; a connection goes back only when h11 says both sides finished the
exchange cleanly. A reused connection that turns out to be dead before any response byte is
replaced by a fresh one once, when the request has no body to replay.

Every new connection is checked here, in `open_tcp`, whatever asked for it (a request in any
form, or a passthrough tunnel): the port against the allow-list, then every address the name
resolves to against the destination rules (`_reach`). The connection goes to those checked
addresses; nothing is looked up a second time, so a name cannot resolve to a public address
for the check and to 127.0.0.1 for the connection (DNS rebinding).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import h11
import trio

from ._channel import Channel
from ._config import Config
from ._errors import (
    ForbiddenError,
    OfflineMissError,
    ProxyError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamTLSError,
    UpstreamUnreachableError,
)
from ._protocol import Headers, Origin
from ._reach import IPAddress, address_refusal

BodyReader = Callable[[], Awaitable[bytes]]
# One getaddrinfo result: (family, type, proto, canonname, sockaddr).
AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]

MAX_IDLE_PER_ORIGIN = 32
# Origins commonly drop idle keep-alive connections after 60 s or more; stay under that.
POOL_IDLE_SECONDS = 50.0
# RFC 8305's recommended pause before trying the next address while one is still connecting.
HAPPY_EYEBALLS_DELAY = 0.25
# Any port does for the route lookup in `is_own_address`: no packet is sent.
PROBE_PORT = 9


def upstream_ssl_context(extra_cas: tuple[Path, ...]) -> ssl.SSLContext:
    """Full verification against the system roots plus `extra_cas`; never switched off."""
    context = ssl.create_default_context()
    for path in extra_cas:
        context.load_verify_locations(cafile=str(path))
    context.set_alpn_protocols(["http/1.1"])
    return context


@contextlib.contextmanager
def translate_errors(origin: Origin) -> Iterator[None]:
    """Map what trio, ssl, socket and h11 raise into one ProxyError naming the origin."""
    where = f"{origin.host}:{origin.port}"
    try:
        yield
    except ProxyError:
        raise
    except trio.TooSlowError as exc:
        raise UpstreamTimeoutError(f"{where} did not answer in time") from exc
    except socket.gaierror as exc:
        raise UpstreamUnreachableError(f"cannot resolve {origin.host}: {exc.strerror}") from exc
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise UpstreamTLSError(
                f"TLS verification failed for {where}: {cause.verify_message}"
            ) from exc
        if isinstance(cause, ssl.SSLError):
            raise UpstreamTLSError(f"TLS with {where} failed: {cause.reason or cause}") from exc
        raise UpstreamError(f"connection to {where} broke: {cause or exc}") from exc
    except trio.ClosedResourceError as exc:
        raise UpstreamError(f"connection to {where} was closed") from exc
    except h11.ProtocolError as exc:
        raise UpstreamError(f"invalid HTTP response from {where}: {exc}") from exc
    except OSError as exc:
        # trio reports failures on an open stream as BrokenResourceError, so an OSError
        # here comes from connecting: refused, unroutable, no address.
        raise UpstreamUnreachableError(f"cannot connect to {where}: {exc.strerror or exc}") from exc


def is_own_address(address: IPAddress) -> bool:
    """Whether a connection to `address` would stay on this machine. Connecting a UDP socket
    only looks up the route; for an address of this machine, the kernel picks that same
    address as the source (RFC 6724 rule 1; Linux does so for every "local" route). Asking
    the kernel per connection, rather than listing interfaces once, also covers addresses
    that appear later (a new network, a VPN, a container bridge)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((str(address), PROBE_PORT))
            source = probe.getsockname()[0]
        except OSError:
            return False  # no route: the connection would fail anyway
    return ipaddress.ip_address(source.partition("%")[0]) == address


async def _connect_first(targets: Sequence[AddressInfo]) -> trio.SocketStream:
    """A TCP connection to the first of `targets` that answers: the next attempt starts when
    one fails or after HAPPY_EYEBALLS_DELAY (RFC 8305), as trio.open_tcp_stream does for a
    name; these addresses were resolved and checked already, so none is looked up again."""
    winner: trio.socket.SocketType | None = None
    errors: list[OSError] = []

    async def attempt(target: AddressInfo, failed: trio.Event) -> None:
        nonlocal winner
        family, kind, proto, _, sockaddr = target
        sock = trio.socket.socket(family, kind, proto)
        try:
            await sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            failed.set()
            return
        except BaseException:
            sock.close()
            raise
        if winner is None:
            winner = sock
            nursery.cancel_scope.cancel()
        else:
            sock.close()

    async with trio.open_nursery() as nursery:
        for target in targets:
            failed = trio.Event()
            nursery.start_soon(attempt, target, failed)
            with trio.move_on_after(HAPPY_EYEBALLS_DELAY):
                await failed.wait()
    if winner is None:
        # translate_errors names the origin; say what went wrong, once per distinct reason.
        raise OSError("; ".join(dict.fromkeys(exc.strerror or str(exc) for exc in errors)))
    return trio.SocketStream(winner)


class _Connection:
    def __init__(self, origin: Origin, stream: trio.abc.Stream) -> None:
        self.origin = origin
        self.channel = Channel(stream, h11.Connection(h11.CLIENT))
        self.idle_since = trio.current_time()

    @property
    def reusable(self) -> bool:
        """Both sides finished cleanly, and the origin sent nothing past its response (bytes
        that would otherwise be read as the answer to the next request)."""
        conn = self.channel.conn
        return (
            conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and not conn.trailing_data[0]
        )

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.channel.stream)


class UpstreamWatcher(Protocol):
    """Told of every origin response head and every origin failure (the metrics)."""

    def answered(self, status: int) -> None: ...

    def failed(self, error: UpstreamError) -> None: ...


class UpstreamResponse:
    """Response head from an origin, and its body read chunk by chunk."""

    def __init__(self, pool: UpstreamPool, connection: _Connection, head: h11.Response) -> None:
        self.status = head.status_code
        self.reason = head.reason
        self.headers: Headers = list(head.headers.raw_items())
        self._pool = pool
        self._connection: _Connection | None = connection

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end. Raises ProxyError on a broken body."""
        connection = self._connection
        if connection is None:
            return b""
        try:
            with translate_errors(connection.origin), trio.fail_after(self._pool.read_timeout):
                event = await connection.channel.next_event()
        except UpstreamError as error:
            self._pool.failed(error)
            raise
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            await self.aclose()
            return b""
        await self.aclose()
        raise UpstreamError(f"unexpected {type(event).__name__} from {connection.origin.host}")

    async def aclose(self) -> None:
        """Give the connection back if the exchange completed, else close it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)


class UpstreamPool:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._ssl_context = upstream_ssl_context(config.upstream_ca)
        self._idle: dict[Origin, list[_Connection]] = {}
        self.read_timeout = config.upstream_timeout
        self.watcher: UpstreamWatcher | None = None

    def failed(self, error: UpstreamError) -> None:
        if self.watcher is not None:
            self.watcher.failed(error)

    def reload(self, config: Config) -> None:
        """Check new connections against `config` (ports, destinations, offline mode)."""
        self._config = config
        self.read_timeout = config.upstream_timeout

    async def open_tcp(self, origin: Origin) -> trio.SocketStream:
        """A plain TCP connection to the origin (also used for passthrough tunnels), once its
        port and every address it resolves to passed the checks; ForbiddenError if not.
        Every upstream connection starts here, so offline mode is enforced here too."""
        if self._config.offline:
            raise OfflineMissError(f"offline mode: not connecting to {origin.host}:{origin.port}")
        refusal = self._config.port_refusal(origin.scheme, origin.host, origin.port)
        if refusal is not None:
            raise ForbiddenError(refusal)
        with translate_errors(origin), trio.fail_after(self._config.connect_timeout):
            return await _connect_first(await self._checked_addresses(origin))

    async def _checked_addresses(self, origin: Origin) -> Sequence[AddressInfo]:
        """Where `origin` may be reached: its --resolve address as given, or every address
        its name resolves to, each allowed by the destination rules."""
        override = self._config.resolve.get((origin.host, origin.port))
        targets = await trio.socket.getaddrinfo(
            override or origin.host, origin.port, type=socket.SOCK_STREAM
        )
        if override is not None:
            return targets
        for *_, sockaddr in targets:
            address = ipaddress.ip_address(sockaddr[0])
            refusal = address_refusal(
                origin.host, address, self._config.allow_destinations, is_own_address
            )
            if refusal is not None:
                raise ForbiddenError(refusal)
        return targets

    async def _connect(self, origin: Origin) -> _Connection:
        stream: trio.abc.Stream = await self.open_tcp(origin)
        if origin.scheme == "https":
            tls = trio.SSLStream(
                stream, self._ssl_context, server_hostname=origin.host, https_compatible=True
            )
            try:
                with translate_errors(origin), trio.fail_after(self._config.connect_timeout):
                    await tls.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            stream = tls
        return _Connection(origin, stream)

    def _take_idle(self, origin: Origin) -> tuple[_Connection | None, list[_Connection]]:
        """Pop a usable idle connection; also return the expired ones for closing."""
        idle = self._idle.get(origin, [])
        expired: list[_Connection] = []
        now = trio.current_time()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < POOL_IDLE_SECONDS:
                return connection, expired
            expired.append(connection)
        return None, expired

    async def release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.origin, [])
        if connection.reusable and len(idle) < MAX_IDLE_PER_ORIGIN:
            connection.channel.conn.start_next_cycle()
            connection.idle_since = trio.current_time()
            idle.append(connection)
        else:
            await connection.aclose()

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodyReader | None,
    ) -> UpstreamResponse:
        """Send one request and return once the response head has arrived.

        `body` is called until it returns b""; errors it raises (the client's side) pass
        through untranslated. Errors on the upstream side become ProxyError."""
        try:
            response = await self._request(origin, method, target, headers, body)
        except UpstreamError as error:
            self.failed(error)
            raise
        if self.watcher is not None:
            self.watcher.answered(response.status)
        return response

    async def _request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodyReader | None,
    ) -> UpstreamResponse:
        connection, expired = self._take_idle(origin)
        for stale in expired:
            await stale.aclose()
        if connection is not None:
            try:
                return await self._exchange(connection, method, target, headers, body)
            except UpstreamTimeoutError:
                raise
            except UpstreamError:
                if body is not None:
                    raise
                # The origin closed a pooled connection while it sat idle: try a fresh one.
        return await self._exchange(await self._connect(origin), method, target, headers, body)

    async def _exchange(
        self,
        connection: _Connection,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodyReader | None,
    ) -> UpstreamResponse:
        channel = connection.channel
        origin = connection.origin
        try:
            with translate_errors(origin):
                await channel.send(h11.Request(method=method, target=target, headers=headers))
            if body is not None:
                while chunk := await body():
                    with translate_errors(origin):
                        await channel.send(h11.Data(data=chunk))
            with translate_errors(origin):
                await channel.send(h11.EndOfMessage())
                with trio.fail_after(self.read_timeout):
                    event = await channel.next_event()
                    while isinstance(event, h11.InformationalResponse):
                        event = await channel.next_event()
            if not isinstance(event, h11.Response):
                raise UpstreamError(f"{origin.host} closed the connection without a response")
        except BaseException:
            await connection.aclose()
            raise
        return UpstreamResponse(self, connection, event)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.aclose()
