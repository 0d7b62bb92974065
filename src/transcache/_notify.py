"""The two systemd service protocols `transcache run` speaks, in the few lines they need.

Readiness (`Type=notify`): the service manager names a datagram socket in NOTIFY_SOCKET (a
path, or an abstract-namespace name when it starts with "@"); the service sends it
"READY=1" once it accepts connections and "STOPPING=1" when it begins to shut down. Without
NOTIFY_SOCKET nothing is sent, so the same binary runs anywhere.

Socket activation: the manager opens the listening sockets itself and starts the service
with them as file descriptors 3, 4, ... and LISTEN_PID (our pid) and LISTEN_FDS (how many)
in the environment. We adopt them and remove the variables, so a child process never
mistakes them for its own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

import trio

# The first inherited descriptor (sd_listen_fds(3): SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def notify(state: str, environ: MutableMapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. "READY=1") to the service manager; False when there is none."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    # A manager that went away is not a reason to stop serving: report, don't raise.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def inherited_sockets(environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The listening sockets passed by socket activation (none when not activated)."""
    try:
        meant_for_us = int(environ.get("LISTEN_PID", "")) == os.getpid()
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for name in ACTIVATION_VARIABLES:
        environ.pop(name, None)
    if not meant_for_us:
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def trio_listeners(sockets: list[socket.socket]) -> list[trio.SocketListener]:
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
