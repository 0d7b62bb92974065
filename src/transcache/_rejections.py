"""Clients that reject our leaf certificate, and what each should change.

A client that refuses the leaf (it trusts its own store, not the bundle) is misconfigured; it
must never change what other clients get, so nothing is learned from a rejection: the host
stays intercepted for everyone. What remains is telling the user, loudly and usefully: once
per host and client program, naming the setting that client reads for its CA, and counted per
host for `transcache status` and `doctor` (through the admin page /tls-rejections).

On Linux the client program is found from the loopback socket's owner in /proc, when it can
be: only the user's own processes are visible, and a client that exits at once (curl) may be
gone before the lookup; then the message lists the usual variables instead.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

# What each client reads for its CA, by program name; {bundle} is our bundle's path.
CLIENT_FIXES = {
    "pip": "set PIP_CERT={bundle} (pip prefers it, and REQUESTS_CA_BUNDLE, to SSL_CERT_FILE)",
    "uv": "set SSL_CERT_FILE={bundle} (uv reads it; UV_NATIVE_TLS=1 uses the system store)",
    "npm": "set NODE_EXTRA_CA_CERTS={bundle} and drop `cafile` from .npmrc "
    "(or `npm config set cafile {bundle}`)",
    "node": "set NODE_EXTRA_CA_CERTS={bundle}",
    "git": "set GIT_SSL_CAINFO={bundle} (or unset git's http.sslCAInfo)",
    "curl": "set CURL_CA_BUNDLE={bundle}",
    "cargo": "set CARGO_HTTP_CAINFO={bundle}",
    "python": "set SSL_CERT_FILE={bundle} and REQUESTS_CA_BUNDLE={bundle}",
}
GENERIC_FIX = (
    "point the client's CA setting at {bundle}: SSL_CERT_FILE, REQUESTS_CA_BUNDLE or PIP_CERT "
    "(pip), NODE_EXTRA_CA_CERTS (npm), GIT_SSL_CAINFO, CURL_CA_BUNDLE, CARGO_HTTP_CAINFO"
)
# Looking a client up scans /proc; a host whose clients keep failing is looked up this often
# at most, so a misbehaving client cannot make the proxy spend its time there.
MAX_LOOKUPS_PER_HOST = 8
# Python launchers whose first argument names the real program (python -m pip, python pip).
_INTERPRETERS = ("python", "node")
_PROC = Path("/proc")


@dataclass
class HostRejections:
    count: int = 0
    clients: set[str] = field(default_factory=set)


class LeafRejections:
    """Rejections per host; `record` says whether the rejection is worth a warning."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostRejections] = {}

    def worth_looking_up(self, host: str) -> bool:
        entry = self.hosts.get(host)
        return entry is None or entry.count < MAX_LOOKUPS_PER_HOST

    def record(self, host: str, program: str | None, address: str) -> bool:
        """Count a rejection by `program` (None when the lookup missed it) at `address`.
        Worth a warning: a program new to this host, or an unnamed client on a host nobody
        was warned about yet. An unnamed one is most likely a client already named (curl is
        often gone before its lookup), and the warning for it would say nothing new."""
        entry = self.hosts.setdefault(host, HostRejections())
        entry.count += 1
        client = program or address
        new = client not in entry.clients if program else not entry.clients
        entry.clients.add(client)
        return new

    def to_json(self) -> dict[str, dict[str, object]]:
        return {
            host: {"count": entry.count, "clients": sorted(entry.clients)}
            for host, entry in sorted(self.hosts.items())
        }


def fix_for(program: str | None, bundle: Path) -> str:
    template = CLIENT_FIXES.get(program or "", GENERIC_FIX)
    return template.format(bundle=bundle)


def program_name(argv: list[str]) -> str:
    """A client's name from its command line: the executable, or for an interpreter the
    script or module it runs (`python3 -m pip` is pip, `node .../npm-cli.js` is npm)."""
    if not argv:
        return "unknown"
    name = os.path.basename(argv[0])
    if not name.startswith(_INTERPRETERS):
        return name
    args = argv[1:]
    if len(args) >= 2 and args[0] == "-m":
        return args[1].split(".")[0]
    for arg in args:
        if not arg.startswith("-"):
            script = os.path.basename(arg).removesuffix(".js").removesuffix(".py")
            return "npm" if script.startswith("npm") else script
    return name.rstrip("0123456789.")


def peer_program(peer: tuple[str, int] | None) -> str | None:
    """The program behind a loopback client socket at `peer` (host, port), or None."""
    if peer is None:
        return None
    inode = _socket_inode(peer[1])
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    with contextlib.suppress(OSError):
        for pid in os.listdir(_PROC):
            if not pid.isdigit():
                continue
            fd_dir = _PROC / pid / "fd"
            with contextlib.suppress(OSError):
                if any(os.readlink(fd_dir / fd) == target for fd in os.listdir(fd_dir)):
                    raw = (_PROC / pid / "cmdline").read_bytes()
                    return program_name([a.decode(errors="replace") for a in raw.split(b"\0") if a])
    return None


def _socket_inode(local_port: int) -> str | None:
    """The inode of the TCP socket whose local port is `local_port` (the client's end)."""
    wanted = f":{local_port:04X}"
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (_PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[1].endswith(wanted) and fields[9] != "0":
                    return fields[9]
    return None
