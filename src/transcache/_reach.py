"""Which addresses the proxy may connect to, and where it may listen. Pure: the upstream
layer resolves a name once, asks `address_refusal` about every address, and connects only to
addresses that passed.

Why: a proxy on a developer machine takes requests from anything that can reach its port,
including a web page in the user's browser (a `fetch()` to the proxy with an absolute-form
target, or a name that resolves to 127.0.0.1). So by default it never connects to loopback,
link-local (cloud metadata at 169.254.169.254), unspecified or this machine's own addresses,
in any spelling (`::ffff:127.0.0.1` is 127.0.0.1). A `--resolve` entry or an
`--allow-destination` rule is the user saying a local destination is meant.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# An --allow-destination rule: a network (one address is a /32 or /128) or a host pattern.
Destination = IPNetwork | str

# Kinds of destination refused by default, by network. 0.0.0.0/8 is "this network": Linux
# connects 0.0.0.0 to loopback.
REFUSED_NETWORKS: tuple[tuple[str, IPNetwork], ...] = (
    ("loopback", ipaddress.ip_network("127.0.0.0/8")),
    ("loopback", ipaddress.ip_network("::1/128")),
    ("link-local", ipaddress.ip_network("169.254.0.0/16")),
    ("link-local", ipaddress.ip_network("fe80::/10")),
    ("unspecified", ipaddress.ip_network("0.0.0.0/8")),
    ("unspecified", ipaddress.ip_network("::/128")),
)
OWN_ADDRESS = "this machine's own"
# Listening on these needs no authentication: only local processes can connect.
LOOPBACK_NAMES = frozenset({"localhost"})


def unmapped(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 one (what the kernel connects to)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def refused_kind(address: IPAddress) -> str | None:
    """ "loopback", "link-local" or "unspecified" for an address refused by default."""
    plain = unmapped(address)
    return next((kind for kind, net in REFUSED_NETWORKS if plain in net), None)


def is_allowed(host: str, address: IPAddress, allowed: Sequence[Destination]) -> bool:
    plain = unmapped(address)
    for rule in allowed:
        if isinstance(rule, str):
            if fnmatch.fnmatchcase(host, rule):
                return True
        elif plain in rule:
            return True
    return False


def address_refusal(
    host: str,
    address: IPAddress,
    allowed: Sequence[Destination],
    is_own: Callable[[IPAddress], bool],
) -> str | None:
    """Why the proxy will not connect to `address` (which `host` resolved to), or None.

    `is_own` says whether an address belongs to this machine; it is asked only about
    addresses no other rule decides."""
    kind = refused_kind(address)
    if kind is None and is_own(unmapped(address)):
        kind = OWN_ADDRESS
    if kind is None or is_allowed(host, address, allowed):
        return None
    plain = unmapped(address)
    named = host if host == str(plain) else f"{host} ({plain})"
    article = "" if kind == OWN_ADDRESS else "an " if kind[0] in "aeiou" else "a "
    return (
        f"{named} is {article}{kind} address: transcache does not connect there unless told to "
        f"(--allow-destination {plain}, or --resolve {host}:PORT:{plain})"
    )


def is_loopback_host(host: str) -> bool:
    """Whether listening on `host` exposes the proxy to this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # another name: it may resolve anywhere
    return refused_kind(address) == "loopback"


def parse_destination(spec: str) -> Destination:
    """An --allow-destination value: an address or CIDR network, else a host pattern."""
    text = spec.strip()
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    if not text or any(c.isspace() or c in "/[]" for c in text):
        raise ValueError(f"expected an address, a CIDR network or a host name, got {spec!r}")
    return text.lower()
