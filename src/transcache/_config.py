"""One frozen configuration for a proxy, and the one way to build it (`build_config`): the
CLI from its flags, the Python API from keyword arguments and the pytest plugin from `transcache
run` flags all pass options named as the flags, which override the environment (the parent
proxy variables only), which overrides the config file's settings, which override the
defaults. Defaults live here and nowhere else."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import _paths
from ._errors import TranscacheError
from ._parent import (
    NO_PARENT,
    ParentProxy,
    bypassed,
    environment_bypass,
    environment_parents,
    parse_bypass,
    parse_parent,
)
from ._policy import Rule, RuleAction
from ._protocol import DEFAULT_PORTS, Origin
from ._reach import Destination, parse_destination
from .tiers.bucket import parse_location

# Options whose values add up: the options' items first, then the config file's.
LIST_OPTIONS = ("rules", "upstream_ca", "passthrough", "allow_destinations")

# The shared tier's settings: set up once at start (a reload keeps them), and what the CLI
# passes on to the service.
SHARED_CACHE_SETTINGS = (
    "shared_cache",
    "shared_cache_timeout",
    "shared_cache_failures",
    "shared_cache_skip",
    "shared_cache_signing_key",
    "shared_cache_verify_key",
    "shared_cache_readonly",
)

DEFAULT_PORT = 8797
# What PyPI's own CDN uses for project pages.
DEFAULT_INDEX_TTL = 600.0
DEFAULT_MAX_SIZE = 10 * 1024**3
# Group and other may not read a parent proxy file that holds credentials.
PRIVATE_MODE_MASK = 0o077


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
    # Ports origins may be reached on besides the scheme's own (443 for CONNECT and https, 80
    # for http); a `resolve` entry opens its port for its own host only.
    connect_ports: frozenset[int] = frozenset()
    # Loopback, link-local, unspecified and own addresses are refused unless a rule here (or
    # `resolve`) names them: networks, or host patterns.
    allow_destinations: tuple[Destination, ...] = ()
    # Users who may use the proxy (`user:token` lines; see _auth): with it, every proxy
    # request and the non-public pages need Basic credentials.
    auth_file: Path | None = None
    # TLS to the proxy itself: clients use an https:// proxy URL (team credentials never
    # cross the network in clear).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Listening beyond loopback needs authentication (auth_file); this starts without it
    # anyway (isolated networks only).
    allow_unauthenticated: bool = False
    # Client connections served at once; None derives it from the fd limit at start.
    max_connections: int | None = None
    # Serving processes of `transcache run` (_workers); None: one per usable core. The API,
    # `exec` and the pytest plugin always serve in their own process.
    workers: int | None = None
    # Seconds: a client must send a whole request head within header_timeout, and may sit
    # idle between keep-alive requests for idle_timeout. A request body is cut when nothing
    # of it arrives for body_timeout, or when it arrives slower than min_body_rate bytes/s
    # (0: no minimum).
    header_timeout: float = 30.0
    idle_timeout: float = 120.0
    body_timeout: float = 60.0
    min_body_rate: int = 1024
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
    # Freshness rules, tried in order before the built-in registry shapes (_registries).
    rules: tuple[Rule, ...] = ()
    # Seconds an index page (a project page, a packument, a Release file) stays fresh when
    # its origin says less or nothing; past it, stale-while-revalidate (docs/caching.md).
    index_ttl: float = DEFAULT_INDEX_TTL
    # Honour a client's reload (max-age=0, no-cache) even inside the index window.
    strict_client_reload: bool = False
    # The parent proxy for each origin scheme ("http", "https"); none: connect directly.
    upstream_proxies: Mapping[str, ParentProxy] = field(default_factory=dict)
    # NO_PROXY-style entries: hosts reached directly even when a parent is configured.
    upstream_proxy_bypass: tuple[str, ...] = ()
    # The shared tier (docs/team.md): s3://BUCKET/PREFIX read after a local miss and written
    # after a store; "" or None: none. Seconds to its first byte before the origin is asked;
    # consecutive failures that make it skipped, and for how many seconds.
    shared_cache: str | None = None
    shared_cache_timeout: float = 2.0
    shared_cache_failures: int = 5
    shared_cache_skip: float = 30.0
    # Ed25519 PEM keys: sign what this proxy uploads; ignore entries not signed by this key.
    shared_cache_signing_key: Path | None = None
    shared_cache_verify_key: Path | None = None
    shared_cache_readonly: bool = False

    def parent_for(self, origin: Origin) -> ParentProxy | None:
        """The parent proxy `origin` is reached through, or None for a direct connection."""
        parent = self.upstream_proxies.get(origin.scheme)
        if parent is None or bypassed(self.upstream_proxy_bypass, origin.host, origin.port):
            return None
        return parent

    def is_passthrough(self, host: str) -> bool:
        return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in self.passthrough)

    def __post_init__(self) -> None:
        for name in ("header_timeout", "idle_timeout", "body_timeout", "connect_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be more than 0 seconds")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if not self.index_ttl > 0:
            raise ConfigError("index_ttl must be more than 0 seconds")
        if self.min_body_rate < 0:
            raise ConfigError("min_body_rate must not be negative")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError("max_connections must be at least 1")
        if self.shared_cache:
            try:
                parse_location(self.shared_cache)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        if (
            not self.shared_cache_timeout > 0
            or self.shared_cache_failures < 1
            or self.shared_cache_skip < 0
        ):
            raise ConfigError(
                "the shared cache needs a timeout over 0 s, 1 failure or more and a skip of "
                "0 s or more"
            )
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if not all(0 < port < 65536 for port in self.connect_ports):
            raise ConfigError(f"connect ports must be 1 to 65535: {sorted(self.connect_ports)}")

    def port_refusal(self, scheme: str, host: str, port: int) -> str | None:
        """Why `host:port` may not be reached over `scheme` (https covers CONNECT), or None."""
        default = DEFAULT_PORTS[scheme]
        if port == default or port in self.connect_ports or (host, port) in self.resolve:
            return None
        return (
            f"port {port} is not allowed: {scheme} reaches port {default} and the "
            f"--connect-port ports (--connect-port {port} opens it, or --resolve "
            f"{host}:{port}:ADDR for this host only)"
        )


def parse_listen(spec: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (HOST may be a bracketed IPv6 literal; PORT 0 picks a free one)."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {spec!r}")
    return host.strip("[]"), int(port)


def parse_resolve(spec: str) -> tuple[tuple[str, int], str]:
    """Parse curl's ``HOST:PORT:ADDR`` (ADDR may be a bracketed IPv6 literal)."""
    host, sep, rest = spec.partition(":")
    port_text, sep2, addr = rest.partition(":")
    if not (sep and sep2 and host and addr and port_text.isdigit()):
        raise ValueError(f"expected HOST:PORT:ADDR, got {spec!r}")
    return (host.lower(), int(port_text)), addr.strip("[]")


class ConfigError(TranscacheError, ValueError):
    """A configuration file or value that cannot be used; the message says where and why."""


def build_config(
    options: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """A Config from `options` over the parent proxy variables of `environ` (when given) over
    the settings in `config_file` (when given and present) over the defaults. Options are
    named as the `transcache run` flags, snake_case, or as the Config fields; None means "not
    given". Lists add up, the options' items first.

    Values may take the forms a caller has at hand: `listen` "HOST:PORT" or (host, port);
    `resolve` curl-style "HOST:PORT:ADDR" strings, ((host, port), addr) pairs or a mapping
    {(host, port): addr}; paths as str; `upstream_ca` and `passthrough` one item or many;
    `connect_ports` (added to 443 and 80) any iterable; `allow_destinations` addresses, CIDR
    networks or host patterns; `upstream_proxy` a URL or "none", or `upstream_proxy_file` a
    file holding one; `upstream_proxy_bypass` NO_PROXY syntax, a string or many. Raises
    ConfigError for a bad value, TypeError for an unknown option."""
    given = _normalised({name: value for name, value in options.items() if value is not None})
    merged = load_config_file(config_file) if config_file is not None else {}
    if environ is not None:
        merged.update(_environment_layer(environ))
    for name, value in given.items():
        if name in LIST_OPTIONS:
            merged[name] = (*value, *merged.get(name, ()))
        elif name == "connect_ports":
            merged[name] = value | merged.get(name, frozenset())
        else:
            merged[name] = value
    unknown = set(merged) - {f.name for f in fields(Config)}
    if unknown:
        raise TypeError(f"unknown proxy options: {', '.join(sorted(unknown))}")
    return Config(**merged)


def _normalised(options: dict[str, Any]) -> dict[str, Any]:
    """`options` with each value in the form Config takes."""
    try:
        if "listen" in options:
            listen = options.pop("listen")
            host, port = parse_listen(listen) if isinstance(listen, str) else listen
            options.setdefault("listen_host", host)
            options.setdefault("listen_port", port)
        if "resolve" in options:
            options["resolve"] = _resolve_map(options["resolve"])
        for name in ("ca_dir", "cache_dir"):
            if name in options:
                options[name] = Path(options[name]).absolute()
        if "upstream_ca" in options:
            options["upstream_ca"] = tuple(Path(p) for p in _as_tuple(options["upstream_ca"]))
        if "passthrough" in options:
            options["passthrough"] = _as_tuple(options["passthrough"])
        if "rules" in options:
            options["rules"] = tuple(options["rules"])
        if "connect_ports" in options:
            options["connect_ports"] = frozenset(int(p) for p in options["connect_ports"])
        if "upstream_proxy_file" in options:
            options["upstream_proxies"] = _parents(
                read_parent_file(options.pop("upstream_proxy_file"))
            )
        if "upstream_proxy" in options:
            options["upstream_proxies"] = _parents(options.pop("upstream_proxy"))
        if "upstream_proxy_bypass" in options:
            options["upstream_proxy_bypass"] = parse_bypass(options["upstream_proxy_bypass"])
        if str(options.get("shared_cache", "")).strip().lower() == NO_PARENT:
            options["shared_cache"] = ""  # --no-shared-cache: none, whatever the file says
        for name in ("shared_cache_signing_key", "shared_cache_verify_key"):
            if name in options:
                options[name] = Path(options[name]).expanduser()
        if "allow_destinations" in options:
            options["allow_destinations"] = tuple(
                parse_destination(str(spec)) for spec in _as_tuple(options["allow_destinations"])
            )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return options


def _environment_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """The parent proxies and the bypass list `environ` sets (only what it sets)."""
    layer: dict[str, Any] = {}
    try:
        parents = environment_parents(environ)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if parents:
        layer["upstream_proxies"] = parents
    bypass = environment_bypass(environ)
    if bypass is not None:
        layer["upstream_proxy_bypass"] = bypass
    return layer


def _parents(spec: str | ParentProxy) -> dict[str, ParentProxy]:
    """One parent for both schemes, or none for NO_PARENT."""
    if isinstance(spec, str):
        if spec.strip().lower() == NO_PARENT:
            return {}
        spec = parse_parent(spec)
    return dict.fromkeys(("http", "https"), spec)


def read_parent_file(path: str | Path) -> ParentProxy:
    """The parent proxy URL in `path` (its first line), which may hold credentials: then
    group and other may not read it (`transcache install` writes it 0600)."""
    path = Path(path)
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the upstream proxy file {path}: {exc}") from exc
    lines = text.strip().splitlines()
    parent = parse_parent(lines[0] if lines else "", str(path))
    if parent.credentials is not None and mode & PRIVATE_MODE_MASK:
        raise ConfigError(
            f"{path} holds proxy credentials and others may read it: chmod 600 {path}"
        )
    return parent


def _resolve_map(
    resolve: Mapping[tuple[str, int], str] | Iterable[str | tuple[tuple[str, int], str]],
) -> dict[tuple[str, int], str]:
    pairs = resolve.items() if isinstance(resolve, Mapping) else resolve
    entries = (parse_resolve(pair) if isinstance(pair, str) else pair for pair in pairs)
    return {(host.lower(), int(port)): address for (host, port), address in entries}


def _as_tuple(value: str | Path | Iterable[Any]) -> tuple[Any, ...]:
    return (value,) if isinstance(value, str | Path) else tuple(value)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from "500M", "10G", "1.5GiB", "1048576"."""
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(f"expected a size such as 500M or 10G, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_min_ttl(spec: str) -> Rule:
    """A `--min-ttl PATTERN=SECONDS` rule."""
    pattern, sep, seconds = spec.rpartition("=")
    if not sep or not pattern or not seconds.isdigit():
        raise ConfigError(f"expected PATTERN=SECONDS, got {spec!r}")
    return Rule(pattern, RuleAction.MIN_TTL, float(seconds))


def load_config_file(path: Path) -> dict[str, Any]:
    """Config keyword options from a TOML file (see docs/caching.md); {} if it is absent.

    Keys: max_size ("10G"), offline (bool), passthrough, upstream_ca, connect_ports,
    allow_destinations (lists), max_connections, workers, idle_timeout, body_timeout (numbers),
    min_body_rate ("1K"), index_ttl (seconds), strict_client_reload (bool), upstream_proxy
    (a URL or "none"), upstream_proxy_bypass (NO_PROXY syntax), shared_cache
    ("s3://BUCKET/PREFIX" or "none"), shared_cache_timeout, shared_cache_skip (seconds),
    shared_cache_failures, shared_cache_signing_key, shared_cache_verify_key (paths),
    shared_cache_readonly (bool), and [[rule]]
    tables with `url` plus one of `min_ttl = SECONDS`, `index_ttl = SECONDS`,
    `immutable = true`, `never = true`, `strict_client_reload = true`."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    options: dict[str, Any] = {}
    try:
        for key, value in data.items():
            if key == "max_size":
                options["max_size"] = parse_size(str(value))
            elif key == "offline":
                options["offline"] = bool(value)
            elif key == "passthrough":
                options["passthrough"] = tuple(str(v) for v in value)
            elif key == "upstream_ca":
                options["upstream_ca"] = tuple(Path(str(v)).expanduser() for v in value)
            elif key == "connect_ports":
                options["connect_ports"] = frozenset(int(v) for v in value)
            elif key == "allow_destinations":
                options["allow_destinations"] = tuple(parse_destination(str(v)) for v in value)
            elif key in ("max_connections", "workers"):
                options[key] = int(value)
            elif key in ("idle_timeout", "body_timeout"):
                options[key] = float(value)
            elif key == "min_body_rate":
                options["min_body_rate"] = parse_size(str(value))
            elif key in ("auth_file", "tls_cert", "tls_key"):
                options[key] = Path(str(value)).expanduser()
            elif key == "index_ttl":
                options["index_ttl"] = float(value)
            elif key == "strict_client_reload":
                options["strict_client_reload"] = bool(value)
            elif key == "upstream_proxy":
                options["upstream_proxies"] = _parents(str(value))
            elif key == "upstream_proxy_bypass":
                options["upstream_proxy_bypass"] = parse_bypass(
                    value if isinstance(value, str) else [str(v) for v in value]
                )
            elif key == "shared_cache":
                options["shared_cache"] = str(value)
            elif key in ("shared_cache_timeout", "shared_cache_skip"):
                options[key] = float(value)
            elif key == "shared_cache_failures":
                options[key] = int(value)
            elif key in ("shared_cache_signing_key", "shared_cache_verify_key"):
                options[key] = Path(str(value)).expanduser()
            elif key == "shared_cache_readonly":
                options[key] = bool(value)
            elif key == "rule":
                options["rules"] = tuple(_rule_from_table(table) for table in value)
            else:
                raise ConfigError(f"unknown setting {key!r}")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return options


def _rule_from_table(table: Mapping[str, Any]) -> Rule:
    url = table.get("url")
    if not isinstance(url, str):
        raise ConfigError('a [[rule]] needs url = "PATTERN"')
    if table.get("never"):
        return Rule(url, RuleAction.NEVER)
    if table.get("immutable"):
        return Rule(url, RuleAction.IMMUTABLE)
    if "min_ttl" in table:
        return Rule(url, RuleAction.MIN_TTL, float(table["min_ttl"]))
    if "index_ttl" in table:
        return Rule(url, RuleAction.INDEX, float(table["index_ttl"]), "rule")
    if table.get("strict_client_reload"):
        return Rule(url, RuleAction.STRICT_RELOAD)
    raise ConfigError(
        f"rule for {url!r} needs min_ttl, index_ttl, immutable = true, never = true or "
        "strict_client_reload = true"
    )
