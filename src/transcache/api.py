"""Embedding: run a proxy inside a trio program (`open_proxy`) or, from synchronous code, in a
background thread with its own trio loop (`Proxy`). Both give the URL, the CA and the
environment a subprocess needs to go through the proxy."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import resource
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import trio

from ._bundle import node_ca_for, write_bundle
from ._ca import CertificateAuthority
from ._config import Config, ConfigError, build_config
from ._launch import NODE_CA_VARIABLE, client_environment, proxy_variable_names, tagged_url
from ._parent import without_self
from ._paths import BUNDLE_NAME
from ._reach import is_loopback_host
from ._server import ProxyServer
from ._stats import ProxyStats
from ._upstream import is_own_address
from .install import doctor_pages
from .store import Store

# Where an embedded proxy listens unless told: a free loopback port, not the service's.
DEFAULT_LISTEN = "127.0.0.1:0"
# Documentation addresses (RFC 5737, RFC 3849) whose route names the address this machine is
# reached at: a UDP connect looks up the route and sends nothing.
ROUTE_PROBES = {socket.AF_INET: "203.0.113.1", socket.AF_INET6: "2001:db8::1"}
PROBE_PORT = 9

log = logging.getLogger("transcache")


def embedded_config(options: dict[str, Any]) -> Config:
    """A Config from `open_proxy`'s or `Proxy`'s keyword options (see `build_config`), on a
    free loopback port unless `listen` says otherwise. No config file is read: an embedded
    proxy is configured by its caller, and by the environment's parent proxy variables unless
    `upstream_proxy` is given ("none" ignores them)."""
    return build_config({"listen": DEFAULT_LISTEN, **options}, environ=os.environ)


@dataclass(frozen=True)
class RunningProxy:
    """A proxy that accepts connections: where it is, and what clients need to use it."""

    url: str
    ca_path: Path
    bundle_path: Path
    server: ProxyServer
    node_ca_path: Path  # our CA, or the user's NODE_EXTRA_CA_CERTS plus ours (node_ca_for)

    @property
    def env(self) -> dict[str, str]:
        """Proxy and CA variables for a subprocess (merge them into os.environ's copy)."""
        return client_environment(self.url, self.bundle_path, self.node_ca_path)

    def stats(self) -> ProxyStats:
        """What this proxy served so far: totals and per client tag (live, not a copy)."""
        return self.server.stats

    def env_for(self, tag: str) -> dict[str, str]:
        """`env` with `tag` as the user name in the proxy URL (``http://TAG:@host:port``):
        clients send it as Proxy-Authorization, and the proxy counts their traffic under
        `stats().by_tag[tag]`. Tags are URL-unreserved characters: letters, digits, ``._~-``."""
        return {**self.env, **dict.fromkeys(proxy_variable_names(), tagged_url(self.url, tag))}


def _start_ca(config: Config) -> tuple[CertificateAuthority, Path]:
    ca = CertificateAuthority.load_or_create(config.ca_dir)
    return ca, write_bundle(config.ca_dir / BUNDLE_NAME, ca.cert_pem)


def _open_store(config: Config) -> Store | None:
    """The cache, or None (with a warning) when it is off or its directory is unusable:
    a broken cache dir degrades to a pass-through proxy, it does not stop one."""
    if not config.cache:
        return None
    try:
        return Store(config.cache_dir, config.max_size)
    except OSError as exc:
        log.warning("cache disabled: cannot use %s: %s", config.cache_dir, exc)
        return None


def raise_fd_limit() -> None:
    """Raise the soft descriptor limit to the hard one: the connection cap derives from it.
    Where the hard limit is "unlimited" (some macOS setups) the kernel refuses that value;
    the soft limit then stays as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.info("cannot raise the open file limit from %d: %s", soft, exc)


def listen_addresses(config: Config, listeners: list[trio.SocketListener] | None) -> list[str]:
    """The hosts the proxy would listen on: inherited sockets' addresses, else --listen's."""
    if listeners is None:
        return [config.listen_host]
    return [str(listener.socket.getsockname()[0]) for listener in listeners]


def check_exposure(config: Config, listeners: list[trio.SocketListener] | None) -> None:
    """Refuse (ConfigError) to listen beyond loopback without an auth file, unless told to,
    and then warn: anyone who reaches the port could use the proxy."""
    exposed = [h for h in listen_addresses(config, listeners) if not is_loopback_host(h)]
    if not exposed or config.auth_file is not None:
        return
    where = ", ".join(exposed)
    if not config.allow_unauthenticated:
        raise ConfigError(
            f"listening on {where} needs authentication: give --auth-file FILE (user:token "
            "lines; see docs/team.md), or listen on 127.0.0.1; on an isolated network "
            "--allow-unauthenticated (allow_unauthenticated=True) starts without it"
        )
    log.warning(
        "listening on %s with no authentication (--allow-unauthenticated): every host that "
        "reaches it can use this proxy, its cache and the interception its CA allows",
        where,
    )


def advertised_host(host: str) -> str:
    """The address clients are told to use for a proxy listening on `host`: for a wildcard
    (0.0.0.0, ::), the address the machine's default route leaves from, which other hosts of
    that network reach; loopback when there is no route. Other hosts are themselves."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if not address.is_unspecified:
        return host
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((ROUTE_PROBES[family], PROBE_PORT))
            return str(probe.getsockname()[0])
        except OSError:
            return "::1" if address.version == 6 else "127.0.0.1"


def parents_for(config: Config, listeners: list[trio.SocketListener]) -> Config:
    """`config` without a parent proxy that is this proxy itself (see `without_self`), once
    the listening addresses are known (port 0 becomes one only then); logs the parents."""
    listening = [listener.socket.getsockname()[:2] for listener in listeners]
    try:
        parents = without_self(config.upstream_proxies, listening, is_own_address)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    for scheme, parent in sorted(parents.items()):
        log.info("%s origins through the upstream proxy %s (%s)", scheme, parent, parent.source)
    if parents and config.upstream_proxy_bypass:
        log.info("reached directly: %s", ",".join(config.upstream_proxy_bypass))
    return dataclasses.replace(config, upstream_proxies=parents)


def proxy_url(server: ProxyServer) -> str:
    host, port = server.address
    host = advertised_host(host)
    scheme = "https" if server.tls is not None else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


@asynccontextmanager
async def open_proxy(
    config: Config | None = None,
    *,
    listeners: list[trio.SocketListener] | None = None,
    **options: Any,
) -> AsyncIterator[RunningProxy]:
    """Serve a proxy for the duration of the block (trio). Pass a Config, or options as
    `embedded_config` takes them; `listeners` (e.g. from socket activation) replace the listening
    address. Raises OSError (unwrapped) when it cannot listen, and ConfigError when the
    address is beyond loopback (see `check_exposure`)."""
    if config is None:
        config = embedded_config(options)
    elif options:
        raise TypeError("pass either a Config or keyword options, not both")
    check_exposure(config, listeners)
    raise_fd_limit()
    ca, bundle = _start_ca(config)
    if listeners is None:
        listeners = await trio.open_tcp_listeners(config.listen_port, host=config.listen_host)
    try:
        config = parents_for(config, listeners)
    except ConfigError:
        for listener in listeners:
            await listener.aclose()
        raise
    store = _open_store(config)
    server = ProxyServer(config, ca, store)
    # Every proxy a user starts answers `transcache doctor`'s fetches: the pages belong to
    # install, and are registered here, where the proxy is assembled, not in the core.
    server.admin.register(doctor_pages.pages())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        if store is not None:
            store.announce(proxy_url(server))  # `cache stats` asks it for live counts
        node_ca = node_ca_for(ca.cert_pem, ca.cert_path, bundle, os.environ.get(NODE_CA_VARIABLE))
        yield RunningProxy(proxy_url(server), ca.cert_path, bundle, server, node_ca)
        nursery.cancel_scope.cancel()


class Proxy:
    """`open_proxy` for synchronous code: the proxy runs in a background thread with its own
    trio loop; entering returns once it accepts connections, leaving stops it and joins the
    thread. Takes what `open_proxy` takes: a Config, or keyword options.

    Leaving the block closes every socket the proxy opened. The cache hands disk work to
    trio's worker threads (`trio.to_thread`); those are shared by the whole process and,
    once idle, exit on their own within trio's idle timeout (10 s)."""

    def __init__(self, config: Config | None = None, **options: Any) -> None:
        if config is not None and options:
            raise TypeError("pass either a Config or keyword options, not both")
        self._config = config if config is not None else embedded_config(options)
        self._thread: threading.Thread | None = None
        self._running: RunningProxy | None = None
        self._stats: ProxyStats | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None

    @property
    def running(self) -> RunningProxy:
        if self._running is None:
            raise RuntimeError("the proxy is not running")
        return self._running

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def env(self) -> dict[str, str]:
        return self.running.env

    @property
    def ca_path(self) -> Path:
        return self.running.ca_path

    def stats(self) -> ProxyStats:
        """See `RunningProxy.stats`; the last run's counts stay readable after `stop`."""
        if self._stats is None:
            raise RuntimeError("the proxy has not been started")
        return self._stats

    def env_for(self, tag: str) -> dict[str, str]:
        """See `RunningProxy.env_for`."""
        return self.running.env_for(tag)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with open_proxy(self._config) as running:
            self._running = running
            self._stats = running.stats()
            self._started.set()
            await self._stop.wait()

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()

    def start(self) -> Self:
        """Start the proxy; returns once it accepts connections. Raises what stopped it
        from starting (OSError when it cannot listen)."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        self._error = None
        self._started.clear()
        self._thread = threading.Thread(target=self._thread_main, name="transcache", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        """Stop serving, close every listener and connection, and join the thread. Raises
        the error that ended the proxy early, if one did."""
        if self._thread is None:
            return
        if self._token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join()
        self._thread = None
        self._running = None
        self._token = self._stop = None
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
