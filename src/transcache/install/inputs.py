"""What `transcache install` may write into a unit, plist or shell file.

Every path and value an install writes into a file reaches it through one of the inputs
below (an option, the interpreter, the home directory), and `check` runs on all of them
before anything is written. Each target format quotes what it can (systemd.py, launchd.py,
environment.py); what no format can carry is refused here, so a value can never end a line,
an XML element or a quoted word early:

- control characters (C0, DEL, C1): a newline would start a new line in a unit, an
  `environment.d` file or a startup file, and XML 1.0 forbids most of them;
- text that is not UTF-8 (undecodable bytes in a path) and the non-characters XML forbids;
- quotes and backslashes in the interpreter's path, which systemd refuses in an
  executable's name (it runs `ExecStart=` words without a shell, so nothing escapes them);
- a listen host that is neither an IP address nor a DNS name (it goes unquoted into URLs
  and `ListenStream=`), and whitespace or commas in a NO_PROXY host (they split the list).

Pure functions: the installer names the inputs (installer.plan_inputs).
"""

from __future__ import annotations

import enum
import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from .._reach import is_loopback_host
from .errors import InstallError

# Characters systemd refuses in an executable's path, even quoted.
EXECUTABLE_UNSAFE = "\"'\\"
# A DNS name as a listen host: letters, digits, hyphens, dots.
DNS_NAME = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?")
NO_PROXY_SEPARATORS = re.compile(r"[\s,]")
# Unicode categories: control characters, and surrogates (how Python holds the bytes of a
# path that are not UTF-8).
CONTROL = "Cc"
SURROGATE = "Cs"


class Kind(enum.Enum):
    PATH = "path"
    EXECUTABLE = "executable"
    LISTEN_HOST = "listen host"
    NO_PROXY_HOST = "NO_PROXY host"


@dataclass(frozen=True)
class Input:
    """One value an install writes into files; `name` says where it came from."""

    name: str
    value: str
    kind: Kind = Kind.PATH


def _character_problem(value: str) -> str | None:
    for char in value:
        category = unicodedata.category(char)
        if category == SURROGATE:
            return "bytes that are not UTF-8"
        if category == CONTROL:
            return f"a control character (U+{ord(char):04X})"
        if ord(char) & 0xFFFE == 0xFFFE:  # U+xxFFFE, U+xxFFFF: not characters in XML
            return f"a non-character (U+{ord(char):04X})"
    return None


def _listen_host_problem(host: str) -> str | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not DNS_NAME.fullmatch(host):
            return "neither an IP address nor a DNS name"
        return _beyond_loopback(host)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return "an IPv6 zone, which URLs cannot carry"
    return _beyond_loopback(host)


def _beyond_loopback(host: str) -> str | None:
    # The service would refuse to start there (see docs/security.md): say so now.
    if is_loopback_host(host):
        return None
    return "listening beyond loopback needs authentication, which the service does not have"


def problem(item: Input) -> str | None:
    """Why `item` cannot be written into a unit, plist or shell file, or None."""
    found = _character_problem(item.value)
    if found is not None:
        return f"it holds {found}"
    if item.kind is Kind.EXECUTABLE and any(c in EXECUTABLE_UNSAFE for c in item.value):
        return "systemd cannot run an executable whose path holds a quote or a backslash"
    if item.kind is Kind.LISTEN_HOST:
        return _listen_host_problem(item.value)
    if item.kind is Kind.NO_PROXY_HOST and NO_PROXY_SEPARATORS.search(item.value):
        return "whitespace or a comma would split it into several NO_PROXY entries"
    return None


def check(inputs: Iterable[Input]) -> None:
    """Raise InstallError naming every input that cannot be written safely."""
    problems = [
        f"{item.name} {item.value!r}: {reason}"
        for item in inputs
        if (reason := problem(item)) is not None
    ]
    if problems:
        raise InstallError("cannot install; nothing was written: " + "; ".join(problems))
