"""One frozen configuration for a proxy. The CLI builds it from flags; the Python API from
keyword arguments; defaults live here and nowhere else."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import _paths
from ._policy import Rule

DEFAULT_PORT = 8797
DEFAULT_CONNECT_PORTS = frozenset({443})
DEFAULT_MAX_SIZE = 10 * 1024**3


@dataclass(frozen=True)
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    ca_dir: Path = field(default_factory=_paths.default_ca_dir)
    cache_dir: Path = field(default_factory=_paths.default_cache_dir)
    # Extra roots trusted for upstream verification, on top of the system roots.
    upstream_ca: tuple[Path, ...] = ()
    # (host, port) -> address to connect to instead of resolving host, as curl's --resolve.
    resolve: Mapping[tuple[str, int], str] = field(default_factory=dict)
    # fnmatch patterns of hosts tunnelled blind, never intercepted.
    passthrough: tuple[str, ...] = ()
    # Ports CONNECT may reach; the ports named in `resolve` are allowed too.
    connect_ports: frozenset[int] = DEFAULT_CONNECT_PORTS
    # Seconds: a client must send a whole request head within header_timeout, and may sit
    # idle between keep-alive requests for idle_timeout.
    header_timeout: float = 30.0
    idle_timeout: float = 120.0
    connect_timeout: float = 15.0
    # Longest silence from an origin mid-response (or before it) before a 504 / cut-off.
    upstream_timeout: float = 120.0
    # Largest request head accepted (a larger one gets 431).
    max_header_bytes: int = 64 * 1024
    # The cache: off entirely with cache=False; bounded at max_size bytes (LRU eviction).
    cache: bool = True
    max_size: int = DEFAULT_MAX_SIZE
    # Answer only from the cache: a miss is a 504 naming the URL.
    offline: bool = False
    # Freshness rules, tried in order before the built-in URL-shape defaults.
    rules: tuple[Rule, ...] = ()

    def is_passthrough(self, host: str) -> bool:
        return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in self.passthrough)

    def connect_allowed(self, port: int) -> bool:
        return port in self.connect_ports or any(p == port for _, p in self.resolve)


def parse_resolve(spec: str) -> tuple[tuple[str, int], str]:
    """Parse curl's ``HOST:PORT:ADDR`` (ADDR may be a bracketed IPv6 literal)."""
    host, sep, rest = spec.partition(":")
    port_text, sep2, addr = rest.partition(":")
    if not (sep and sep2 and host and addr and port_text.isdigit()):
        raise ValueError(f"expected HOST:PORT:ADDR, got {spec!r}")
    return (host.lower(), int(port_text)), addr.strip("[]")
