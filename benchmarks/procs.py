"""Process plumbing shared by the upstream and the peers: free ports, waiting for a listener,
starting and stopping daemons we own, and resident memory of a process tree."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
RSS_SAMPLE_INTERVAL = 0.05


def free_port() -> int:
    """A port the OS just handed out on 127.0.0.1 (for daemons that need it in a config)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited {process.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{process.args!r} did not listen on {port}:\n{_tail(log)}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"


def spawn(
    command: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a daemon in its own process group with stdout and stderr going to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a daemon we started (and its process group, which only it and its helpers share)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants (a proxy's workers, squid's helpers, nginx's workers)."""
    tree = _children()
    pids: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        pids.append(pid)
        pending += tree.get(pid, [])
    return pids


def rss_bytes(pid: int) -> int:
    """A process's resident memory; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants (RSS summed; helpers included)."""
    return sum(rss_bytes(pid) for pid in tree_pids(root))


def socket_inodes(pid: int) -> list[int]:
    """The inodes of a process's open sockets; `len(open_fds(pid))` counts all its fds."""
    inodes = []
    for fd in open_fds(pid):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.append(int(target[len("socket:[") : -1]))
    return inodes


def fds_under(pid: int, directory: str) -> int:
    """How many of a process's open fds are files in `directory`."""
    count = 0
    for fd in open_fds(pid):
        with contextlib.suppress(OSError):
            count += os.path.dirname(os.readlink(f"/proc/{pid}/fd/{fd}")) == directory
    return count


def environment_variable(pid: int, name: str) -> str | None:
    """`name` in the environment a process was started with (None if unset or unreadable)."""
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = name.encode() + b"="
    return next((e[len(prefix) :].decode() for e in entries if e.startswith(prefix)), None)


def open_fds(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []


def inodes_connected_to(port: int) -> set[int]:
    """Inodes of this machine's TCP sockets whose remote end is `port` on loopback."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    found.add(int(fields[9]))
    return found


class RssSampler:
    """Samples a process tree's RSS in a thread while a workload runs; `peak` is the maximum."""

    def __init__(self, root: int | None) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.root is not None and not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.root))
            self._stop.wait(RSS_SAMPLE_INTERVAL)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
