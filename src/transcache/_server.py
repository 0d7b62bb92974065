"""The proxy server: listeners, one trio task per client connection, and routing.

Each connection runs the HTTP/1.1 loop (_connection); the server routes what it reads:
- ``CONNECT host:port`` to the tunnels (_tunnel);
- an absolute-form ``http://`` (or ``https://``) request, or an origin-form one inside a
  tunnel, to the forwarder (through the cache, or straight upstream);
- an origin-form request, or any for ADMIN_HOST, to the proxy's own pages (_admin).

Nothing a client sends can end the server or leave a task behind: past the connection cap an
idle connection makes room or the newcomer gets a 503, and running out of descriptors makes
accept() back off rather than fail.

`reload` swaps in a new Config (SIGHUP re-reads the config file): new connections and new
requests follow it, those in progress finish under the old one. What was set up once at the
start keeps its value until a restart (RESTART_SETTINGS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import resource
import socket
import ssl

import h11
import trio

from ._access import AccessLog, Exchange
from ._admin import ADMIN_HOST, AdminPages, core_pages
from ._auth import Credentials, Gate
from ._ca import CertificateAuthority
from ._channel import READ_SIZE
from ._config import SHARED_CACHE_SETTINGS, Config, ConfigError
from ._connection import Client, ConnectionLoop, Forwarder
from ._limits import ConnectionSlots, default_max_connections
from ._observe import Observer
from ._protocol import Origin
from ._rejections import LeafRejections
from ._stats import ProxyStats
from ._trim import trim_when_quiet
from ._tunnel import Tunnels
from ._upstream import UpstreamPool
from .cache import Cache
from .store import Store
from .store.recount import keep_counted

log = logging.getLogger("transcache")

# The fd count assumed when the limit is "unlimited" (some macOS setups).
UNLIMITED_FDS = 10240
# accept() failures that mean "out of descriptors or memory for now", not a broken listener.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# Pause between accept attempts while descriptors are exhausted (trio's serve_listeners
# waits as long, but logs a traceback at every attempt).
ACCEPT_BACKOFF_SECONDS = 0.1
# Settings a reload cannot change, and why: the listening sockets are bound (or the service
# manager's, under socket activation); the CA signs the leaves clients already hold and the
# bundle they trust; the store is open and downloads in flight write into it; the upstream
# roots are loaded once and the pooled connections were verified against them; the proxy's own
# TLS and which auth file (its users are re-read) are set up with the listeners.
RESTART_SETTINGS = (
    "listen_host",
    "listen_port",
    "ca_dir",
    "cache",
    "cache_dir",
    "upstream_ca",
    "auth_file",  # its users are re-read; which file (or none) only at a restart
    "tls_cert",
    "tls_key",
    *SHARED_CACHE_SETTINGS,
)


class ProxyServer:
    """A proxy: listeners, the connection cap, and the parts each request is routed to."""

    def __init__(
        self, config: Config, ca: CertificateAuthority, store: Store | None = None
    ) -> None:
        self.config = config
        self.ca = ca
        self.pool = UpstreamPool(config)
        self.cache = Cache(config, store, self.pool)
        self.stats = ProxyStats()
        self.slots = ConnectionSlots(config.max_connections or default_max_connections(_fd_limit()))
        # Clients that refused our leaf: reported, never acted on (see _rejections).
        self.leaf_rejections = LeafRejections()
        self.listeners: list[trio.SocketListener] = []
        # Metrics, the status page and live stats: fed by the access log and the pool.
        self.observer = Observer(config, self.cache, self.slots)
        self.pool.watcher = self.observer.metrics
        self.admin = AdminPages()
        self.admin.register(core_pages(ca.cert_pem, self.leaf_rejections))
        self.admin.register(self.observer.pages())
        access = AccessLog(self.stats, *self.observer.recorders())
        access.handshakes = self.observer.metrics.handshake
        self.connections = ConnectionLoop(config, self.slots, access, self)
        self.forwarder = Forwarder(self.cache)
        self.gate = Gate(Credentials.load(config.auth_file) if config.auth_file else None)
        self.tunnels = Tunnels(
            config, ca, self.pool, self.leaf_rejections, self.gate, self.connections.serve
        )
        # TLS to the proxy itself (--tls-cert): clients use an https:// proxy URL.
        self.tls = _proxy_tls_context(config)

    def reload(self, config: Config) -> list[str]:
        """Serve with `config` from now on, except RESTART_SETTINGS, which keep their values;
        returns those of them that `config` changes (they need a restart)."""
        ignored = [n for n in RESTART_SETTINGS if getattr(config, n) != getattr(self.config, n)]
        config = dataclasses.replace(
            config, **{name: getattr(self.config, name) for name in RESTART_SETTINGS}
        )
        if config.auth_file is not None:  # re-read: users added or revoked (ConfigError: kept)
            self.gate.credentials = Credentials.load(config.auth_file)
        self.config = self.connections.config = self.tunnels.config = config
        self.pool.reload(config)
        self.cache.reload(config)
        if config.max_connections is not None:
            self.slots.limit = config.max_connections
        return ignored

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
                await nursery.start(self.cache.run)
                if self.cache.store is not None:
                    nursery.start_soon(keep_counted, self.cache.store)
                nursery.start_soon(trim_when_quiet, self.slots)
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
        """Serve one client connection until it ends, then close it."""
        peer = _peer_name(stream)
        try:
            if self.tls is not None:
                stream = await self._tls_handshake(stream, peer)
            await self.connections.serve(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to tell it
        except Exception:
            log.exception("unexpected error while serving %s", peer)
        finally:
            await trio.aclose_forcefully(stream)

    async def _tls_handshake(
        self, stream: trio.abc.Stream, peer: str
    ) -> trio.SSLStream[trio.abc.Stream]:
        """TLS with the client before anything else (an https:// proxy URL)."""
        assert self.tls is not None
        tls = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(self.config.header_timeout):
                await tls.do_handshake()
        except trio.TooSlowError as exc:
            log.info("%s: TLS handshake with the proxy timed out", peer)
            raise trio.BrokenResourceError from exc
        return tls

    # -- routing: the connection loop's Router -------------------------------------------------

    async def respond(
        self,
        client: Client,
        request: h11.Request,
        origin: Origin | None,
        path: str,
        exchange: Exchange,
    ) -> None:
        headers = list(request.headers.raw_items())
        if origin is None or origin.host == ADMIN_HOST:
            exchange.url = path
            exchange.to_proxy = True
            who = self.gate.admin(headers, client.who, path)
            exchange.tag, exchange.user = who.tag or exchange.tag, who.user
            await self.admin.serve(client, request, path, exchange)
        else:
            exchange.url = origin.url(path)
            who = self.gate.proxy(headers, client.who)
            exchange.tag, exchange.user = who.tag, who.user
            await self.forwarder.forward(client, request, origin, path, exchange)

    async def connect(self, client: Client, request: h11.Request) -> None:
        await self.tunnels.connect(client, request)


def _proxy_tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use --tls-cert {config.tls_cert}: {exc}") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


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
