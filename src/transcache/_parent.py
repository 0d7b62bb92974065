"""The parent proxy (a corporate proxy, cntlm, px) that upstream connections go through, and
which hosts skip it. Pure: parsing the URL and the NO_PROXY-style bypass list, reading both
from an environment, and recognising a value that points back at transcache itself.

Where a parent comes from, first found wins: --upstream-proxy (or --upstream-proxy-file),
the environment's https_proxy / http_proxy (each for its own scheme), the config file. A
value that points at a transcache is never a parent: the proxy variables of a shell set up
by `transcache install`, of `transcache exec` or of the pytest plugin name the transcache
they belong to in TRANSCACHE_URL, and a proxy also skips its own listening addresses
(`points_at`), so it never sends its traffic to itself.

Credentials stay inside `ParentProxy`: its str() and repr() never show them, so a log line,
an error or `status` can name the parent freely.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ._launch import OWN_URL_VARIABLE
from ._reach import IPAddress, is_loopback_host, refused_kind, unmapped

# The value that turns chaining off, whatever the environment says.
NO_PARENT = "none"
PARENT_SCHEME = "http"
DEFAULT_PARENT_PORT = 3128
# Each origin scheme's variables, lower case first (curl reads only the lower-case
# http_proxy: a CGI request's Proxy header arrives as HTTP_PROXY).
SCHEME_VARIABLES = {"https": ("https_proxy", "HTTPS_PROXY"), "http": ("http_proxy", "HTTP_PROXY")}
BYPASS_VARIABLES = ("no_proxy", "NO_PROXY")
# A bypass entry that matches every host.
EVERY_HOST = "*"


class ParentURLError(ValueError):
    """A parent proxy URL that cannot be used; the message says why."""


@dataclass(frozen=True)
class ParentProxy:
    host: str
    port: int
    # "user:password", never shown (repr=False, and not in str()).
    credentials: str | None = field(default=None, repr=False)
    # Where this parent was configured: a flag, a variable, a file.
    source: str = "--upstream-proxy"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{PARENT_SCHEME}://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL with its credentials: for the 0600 file `install` writes, nothing else."""
        if self.credentials is None:
            return str(self)
        user, _, password = self.credentials.partition(":")
        return str(self).replace("://", f"://{_quote(user)}:{_quote(password)}@", 1)

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Proxy-Authorization for every request the parent sees, when it has credentials."""
        if self.credentials is None:
            return []
        token = base64.b64encode(self.credentials.encode()).decode("ascii")
        return [(b"Proxy-Authorization", f"Basic {token}".encode("ascii"))]


def _quote(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._~" else f"%{ord(c):02X}" for c in text)


def parse_parent(text: str, source: str = "--upstream-proxy") -> ParentProxy:
    """`http://[USER:PASS@]HOST[:PORT]` (no scheme means http, as curl reads it)."""
    spec = text.strip()
    if "://" not in spec:
        spec = f"{PARENT_SCHEME}://{spec}"
    parts = urlsplit(spec)
    if parts.scheme.lower() != PARENT_SCHEME:
        raise ParentURLError(
            f"{source}: only http:// parent proxies are supported, got {parts.scheme}://"
        )
    try:
        port = parts.port or DEFAULT_PARENT_PORT
    except ValueError as exc:
        raise ParentURLError(f"{source}: bad port in the parent proxy URL") from exc
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ParentURLError(f"{source}: expected http://[USER:PASS@]HOST:PORT")
    credentials = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return ParentProxy(parts.hostname.lower(), port, credentials, source)


def parse_bypass(text: str | Iterable[str]) -> tuple[str, ...]:
    """NO_PROXY syntax: hosts separated by commas or spaces; `.example.com` and
    `*.example.com` also match subdomains, as does `example.com`; an address, a CIDR network,
    `*` for everything; `HOST:PORT` limits an entry to one port."""
    items = text.replace(",", " ").split() if isinstance(text, str) else text
    return tuple(item.strip().lower() for item in items if item.strip())


def _bypass_entry_matches(entry: str, host: str, port: int) -> bool:
    if entry == EVERY_HOST:
        return True
    name, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
    if entry_port and int(entry_port) != port:
        return False
    name = name.strip("[]").removeprefix("*").removeprefix(".")
    try:
        network = ipaddress.ip_network(name, strict=False)
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == name or host.endswith("." + name)
    return unmapped(address) in network


def _has_port(entry: str) -> bool:
    head, sep, tail = entry.rpartition(":")
    return bool(sep) and tail.isdigit() and (":" not in head or head.endswith("]"))


def bypassed(patterns: Iterable[str], host: str, port: int) -> bool:
    """Whether `host:port` is reached directly, not through the parent."""
    host = host.lower().strip("[]").rstrip(".")
    return any(_bypass_entry_matches(entry, host, port) for entry in patterns)


def environment_parents(environ: Mapping[str, str]) -> dict[str, ParentProxy]:
    """The parents the environment names, by origin scheme, except values that point at a
    transcache (see the module comment). Raises ParentURLError naming the variable."""
    own = environ.get(OWN_URL_VARIABLE)
    parents = {}
    for scheme, names in SCHEME_VARIABLES.items():
        name = next((n for n in names if environ.get(n, "").strip()), None)
        if name is None:
            continue
        parent = parse_parent(environ[name], name)
        if own is not None and _same_endpoint(parent, own):
            continue
        parents[scheme] = parent
    return parents


def environment_bypass(environ: Mapping[str, str]) -> tuple[str, ...] | None:
    """The environment's NO_PROXY entries, or None when it sets none."""
    name = next((n for n in BYPASS_VARIABLES if n in environ), None)
    return None if name is None else parse_bypass(environ[name])


def _same_endpoint(parent: ParentProxy, url: str) -> bool:
    try:
        other = parse_parent(url)
    except ParentURLError:
        return False
    return (other.host, other.port) == (parent.host, parent.port)


def points_at(
    parent: ParentProxy, listening: Iterable[tuple[str, int]], is_own: Callable[[IPAddress], bool]
) -> bool:
    """Whether `parent` is one of `listening` (host, port): this proxy itself. `is_own` says
    whether an address belongs to this machine (a wildcard listener answers on all of them)."""
    try:
        address: IPAddress | None = unmapped(ipaddress.ip_address(parent.host))
    except ValueError:
        address = None
    for host, port in listening:
        if port != parent.port:
            continue
        wildcard = refused_kind(ipaddress.ip_address(host)) == "unspecified"
        if parent.host == host.lower() or (wildcard and address is not None and is_own(address)):
            return True
        if is_loopback_host(parent.host) and (wildcard or is_loopback_host(host)):
            return True
    return False


def without_self(
    parents: Mapping[str, ParentProxy],
    listening: Iterable[tuple[str, int]],
    is_own: Callable[[IPAddress], bool],
) -> dict[str, ParentProxy]:
    """`parents` less those that are this proxy itself: one from the environment is dropped
    (the variables were meant for this proxy's clients); one configured explicitly is an
    error, since following it would loop."""
    listening = list(listening)
    kept = {}
    environment_names = {name for names in SCHEME_VARIABLES.values() for name in names}
    for scheme, parent in parents.items():
        if not points_at(parent, listening, is_own):
            kept[scheme] = parent
        elif parent.source not in environment_names:
            raise ParentURLError(
                f"{parent.source} {parent} is this proxy's own address: it would send its "
                "traffic to itself"
            )
    return kept
