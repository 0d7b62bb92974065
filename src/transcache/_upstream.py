"""Connections to origins: a keep-alive pool per (scheme, host, port), TLS verified against the
system roots plus configured extra CAs, and every transport or protocol failure translated once,
here, into a ProxyError that says what went wrong (502 / 504).

The pool decides state synchronously (take an idle connection, put one back) and does I/O
outside those decisions; a connection goes back only when h11 says both sides finished the
exchange cleanly. A reused connection that turns out to be dead before any response byte is
replaced by a fresh one once, when the request has no body to replay. Which idle connections
are kept, and for how long, is `_idle.IdleConnections`'s to say.

Every new connection is checked here, in `open_tcp`, whatever asked for it (a request in any
form, or a passthrough tunnel): the port against the allow-list, then every address the name
resolves to against the destination rules (`_reach`). The connection goes to those checked
addresses; nothing is looked up a second time, so a name cannot resolve to a public address
for the check and to 127.0.0.1 for the connection (DNS rebinding).

Through a parent proxy (`Config.parent_for`), the connection goes to the parent instead:
`CONNECT host:port` for https origins and passthrough tunnels (our verified TLS then runs
inside the tunnel, exactly as over a direct connection), and absolute-form requests on a
plain connection for http origins, each carrying the parent's Proxy-Authorization. The parent
resolves origin names, so only a literal address is checked against the destination rules
(a --resolve entry, allowed as ever, becomes the CONNECT target); the configured parent
itself is never refused, even on loopback (cntlm, px). Pooled connections through a parent
are kept per origin like direct ones. A parent's refusal (407, 403, ...) is a 502 naming the
parent and its answer.
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
from ._idle import IdleConnections
from ._parent import ParentProxy
from ._protocol import Headers, Origin
from ._reach import IPAddress, address_refusal
from ._tls_client import RECEIVE_SIZE, TLSClientStream

BodyReader = Callable[[], Awaitable[bytes]]
# One getaddrinfo result: (family, type, proto, canonname, sockaddr).
AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]

# RFC 8305's recommended pause before trying the next address while one is still connecting.
HAPPY_EYEBALLS_DELAY = 0.25
# Any port does for the route lookup in `is_own_address`: no packet is sent.
PROBE_PORT = 9
PROXY_AUTH_REQUIRED = 407
# A parent's answers that mean it could not reach the origin (nothing was exchanged with the
# origin), as opposed to refusing us: a stale copy may answer for them.
PARENT_UNREACHABLE_STATUSES = frozenset({502, 503, 504})


def replay(body: bytes | None) -> BodyReader | None:
    """A body reader over bytes already in hand (a git request read whole to be keyed, an
    object sent to the shared tier)."""
    if body is None:
        return None
    pending = [body]

    async def read() -> bytes:
        return pending.pop() if pending else b""

    return read


def upstream_ssl_context(extra_cas: tuple[Path, ...]) -> ssl.SSLContext:
    """Full verification against the system roots plus `extra_cas`; never switched off."""
    context = ssl.create_default_context()
    for path in extra_cas:
        context.load_verify_locations(cafile=str(path))
    context.set_alpn_protocols(["http/1.1"])
    return context


@contextlib.contextmanager
def translate_errors(origin: Origin, parent: ParentProxy | None = None) -> Iterator[None]:
    """Map what trio, ssl, socket and h11 raise into one ProxyError naming the origin (and
    the parent proxy, when the connection goes through one)."""
    where = f"{origin.host}:{origin.port}"
    if parent is not None:
        where += f" through the upstream proxy {parent}"
    try:
        yield
    except ProxyError:
        raise
    except trio.TooSlowError as exc:
        raise UpstreamTimeoutError(f"{where} did not answer in time") from exc
    except socket.gaierror as exc:
        name = origin.host if parent is None else f"the upstream proxy {parent.host}"
        raise UpstreamUnreachableError(f"cannot resolve {name}: {exc.strerror}") from exc
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


def parent_refusal(parent: ParentProxy, request: str, status: int, reason: bytes) -> UpstreamError:
    """The error for a parent proxy's refusal of `request` (a 502, or unreachable when the
    parent says it could not reach the origin)."""
    answer = f"{status} {reason.decode('ascii', 'replace')}".strip()
    message = f"the upstream proxy {parent} ({parent.source}) refused {request}: {answer}"
    if status == PROXY_AUTH_REQUIRED:
        message += " (its credentials are missing or wrong)"
    if status in PARENT_UNREACHABLE_STATUSES:
        return UpstreamUnreachableError(message)
    return UpstreamError(message)


async def open_parent_tunnel(stream: trio.abc.Stream, parent: ParentProxy, authority: str) -> None:
    """Ask `parent`, on `stream`, for a tunnel to `authority` (HOST:PORT); raises the parent's
    refusal. The stream then carries the origin's bytes."""
    channel = Channel(stream, h11.Connection(h11.CLIENT))
    target = authority.encode("ascii")
    headers = [(b"Host", target), *parent.headers]
    await channel.send(h11.Request(method=b"CONNECT", target=target, headers=headers))
    await channel.send(h11.EndOfMessage())
    event = await channel.next_event()
    while isinstance(event, h11.InformationalResponse):
        event = await channel.next_event()
    if not isinstance(event, h11.Response):
        raise UpstreamError(f"the upstream proxy {parent} closed the connection on CONNECT")
    if not 200 <= event.status_code < 300:
        raise parent_refusal(parent, f"CONNECT {authority}", event.status_code, event.reason)
    if channel.conn.trailing_data[0]:
        # The origin's first bytes cannot come before our TLS hello: not a tunnel.
        raise UpstreamError(f"the upstream proxy {parent} sent data before the tunnel opened")


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
    def __init__(
        self, origin: Origin, stream: trio.abc.Stream, parent: ParentProxy | None = None
    ) -> None:
        self.origin = origin
        # Set for an http origin reached through a parent: requests go in absolute form.
        self.parent = parent
        # Large reads: a body arrives in a few big pieces, not one per TLS record.
        self.channel = Channel(stream, h11.Connection(h11.CLIENT), RECEIVE_SIZE)
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
            with (
                translate_errors(connection.origin, connection.parent),
                trio.fail_after(self._pool.read_timeout),
            ):
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
        self._idle: IdleConnections[_Connection] = IdleConnections()
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
        """A TCP connection that carries the origin's bytes (also used for passthrough
        tunnels): direct, once its port and every address it resolves to passed the checks,
        or a CONNECT tunnel through the parent proxy; ForbiddenError if refused.
        Every upstream connection starts here, so offline mode is enforced here too."""
        parent = self._route(origin)
        if parent is None:
            with translate_errors(origin), trio.fail_after(self._config.connect_timeout):
                return await _connect_first(await self._checked_addresses(origin))
        stream = await self._open_parent(origin, parent)
        try:
            with translate_errors(origin, parent), trio.fail_after(self._config.connect_timeout):
                await open_parent_tunnel(stream, parent, self._tunnel_authority(origin))
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    def _route(self, origin: Origin) -> ParentProxy | None:
        """The checks every connection passes (offline, port), and its parent proxy."""
        if self._config.offline:
            raise OfflineMissError(f"offline mode: not connecting to {origin.host}:{origin.port}")
        refusal = self._config.port_refusal(origin.scheme, origin.host, origin.port)
        if refusal is not None:
            raise ForbiddenError(refusal)
        parent = self._config.parent_for(origin)
        if parent is not None and (origin.host, origin.port) not in self._config.resolve:
            # The parent resolves names; a literal address is checked here.
            with contextlib.suppress(ValueError):
                self._check_address(origin.host, ipaddress.ip_address(origin.host))
        return parent

    async def _open_parent(self, origin: Origin, parent: ParentProxy) -> trio.SocketStream:
        """A TCP connection to the parent proxy: configured, so exempt from the destination
        rules (a loopback parent is the point of cntlm and px)."""
        with translate_errors(origin, parent), trio.fail_after(self._config.connect_timeout):
            targets = await trio.socket.getaddrinfo(
                parent.host, parent.port, type=socket.SOCK_STREAM
            )
            return await _connect_first(targets)

    def _tunnel_authority(self, origin: Origin) -> str:
        """What the parent is asked to CONNECT to: a --resolve entry's address, else the name."""
        host = self._config.resolve.get((origin.host, origin.port), origin.host)
        return f"[{host}]:{origin.port}" if ":" in host else f"{host}:{origin.port}"

    def _check_address(self, host: str, address: IPAddress) -> None:
        refusal = address_refusal(host, address, self._config.allow_destinations, is_own_address)
        if refusal is not None:
            raise ForbiddenError(refusal)

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
            self._check_address(origin.host, ipaddress.ip_address(sockaddr[0]))
        return targets

    async def _connect(self, origin: Origin) -> _Connection:
        parent = self._config.parent_for(origin)
        if origin.scheme == "http" and parent is not None:
            self._route(origin)
            return _Connection(origin, await self._open_parent(origin, parent), parent)
        stream: trio.abc.Stream = await self.open_tcp(origin)
        if origin.scheme == "https":
            tls = TLSClientStream(stream, self._ssl_context, origin.host)
            try:
                with (
                    translate_errors(origin, parent),
                    trio.fail_after(self._config.connect_timeout),
                ):
                    await tls.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            stream = tls
        return _Connection(origin, stream)

    async def release(self, connection: _Connection) -> None:
        now = trio.current_time()
        if connection.reusable and self._idle.put(connection, now):
            connection.channel.conn.start_next_cycle()
        else:
            await connection.aclose()
        for stale in self._idle.sweep(now):
            await stale.aclose()

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
        connection, expired = self._idle.take(origin, trio.current_time())
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
        parent = connection.parent
        if parent is not None:
            target = origin.url(target.decode("ascii")).encode("ascii")
            headers = [*headers, *parent.headers]
        try:
            with translate_errors(origin, parent):
                await channel.send(h11.Request(method=method, target=target, headers=headers))
            if body is not None:
                while chunk := await body():
                    with translate_errors(origin, parent):
                        await channel.send(h11.Data(data=chunk))
            with translate_errors(origin, parent):
                await channel.send(h11.EndOfMessage())
                with trio.fail_after(self.read_timeout):
                    event = await channel.next_event()
                    while isinstance(event, h11.InformationalResponse):
                        event = await channel.next_event()
            if not isinstance(event, h11.Response):
                raise UpstreamError(f"{origin.host} closed the connection without a response")
            if parent is not None and event.status_code == PROXY_AUTH_REQUIRED:
                request = f"{method.decode('ascii')} {target.decode('ascii')}"
                raise parent_refusal(parent, request, event.status_code, event.reason)
        except BaseException:
            await connection.aclose()
            raise
        return UpstreamResponse(self, connection, event)

    async def aclose(self) -> None:
        for connection in self._idle.drain():
            await connection.aclose()
