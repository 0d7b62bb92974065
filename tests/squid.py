"""A real squid as a corporate parent proxy for the chaining tests: an unprivileged foreground
process on a free loopback port, with its config, logs and (no) cache in a work directory of
its own under the system temp dir (run as root, squid drops to the `proxy` user, who must
reach that directory; pytest's tmp_path is private). Basic authentication goes through
squid's `basic_ncsa_auth` helper and an htpasswd file (apr1 hashes from `openssl passwd
-apr1`); its hosts file resolves the `.test` names to 127.0.0.1: the parent resolves origin
names, transcache does not.

It caches nothing, so every request transcache sends it reaches the origin and its access
log (`requests`) shows each one, with transcache's source port, which tells connections
apart. squid writes a CONNECT's line when the tunnel closes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SQUID = "/usr/sbin/squid"
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"
START_TIMEOUT = 30.0
LOG_TIMEOUT = 15.0
POLL_SECONDS = 0.05
# One access-log line: client address:port, method, URL, status, user.
LOG_FORMAT = "%>a:%>p %rm %ru %>Hs %un"
# squid drops root privileges to this user (Debian's), so its files must be this user's.
SQUID_USER = "proxy"


@dataclass(frozen=True)
class LogLine:
    client_port: int
    method: str
    url: str
    status: int
    user: str


def free_port() -> int:
    """A port the OS just handed out on 127.0.0.1 (squid needs it in its config)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def htpasswd_line(user: str, password: str) -> str:
    digest = subprocess.run(
        ["openssl", "passwd", "-apr1", password], capture_output=True, text=True, check=True
    ).stdout.strip()
    return f"{user}:{digest}\n"


class Squid:
    def __init__(self, hosts: Iterable[str], user: str, password: str) -> None:
        self.workdir = workdir = Path(tempfile.mkdtemp(prefix="transcache-squid-"))
        self.port = free_port()
        self.user = user
        self.password = password
        (workdir / "htpasswd").write_text(htpasswd_line(user, password))
        (workdir / "hosts").write_text("127.0.0.1 " + " ".join(hosts) + "\n")
        (workdir / "squid.conf").write_text(self._config())
        if os.geteuid() == 0:
            shutil.chown(workdir, SQUID_USER, SQUID_USER)
            for path in workdir.iterdir():
                shutil.chown(path, SQUID_USER, SQUID_USER)
        self.process = subprocess.Popen(
            [SQUID, "-N", "-f", str(workdir / "squid.conf")],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "squid.out").open("wb"),
            stdin=subprocess.DEVNULL,
        )
        self._wait_listening()

    def _config(self) -> str:
        d = self.workdir
        return f"""
http_port 127.0.0.1:{self.port}
auth_param basic program {NCSA_AUTH} {d}/htpasswd
auth_param basic realm parent
acl authenticated proxy_auth REQUIRED
http_access deny !authenticated
http_access allow all
hosts_file {d}/hosts
cache deny all
logformat chain {LOG_FORMAT}
access_log stdio:{d}/access.log chain
cache_log {d}/cache.log
pid_filename {d}/squid.pid
coredump_dir {d}
shutdown_lifetime 0 seconds
"""

    @property
    def url(self) -> str:
        """The parent's URL with its credentials."""
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.port}"

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"squid exited {self.process.returncode}: {self._tail()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            time.sleep(POLL_SECONDS)
        raise RuntimeError(f"squid did not listen on {self.port}: {self._tail()}")

    def _tail(self) -> str:
        texts = []
        for name in ("squid.out", "cache.log"):
            with contextlib.suppress(OSError):
                texts.append((self.workdir / name).read_text(errors="replace")[-3000:])
        return "\n".join(texts)

    def requests(self) -> list[LogLine]:
        try:
            text = (self.workdir / "access.log").read_text()
        except FileNotFoundError:
            return []
        lines = []
        for line in text.splitlines():
            client, method, url, status, user = line.split()
            if method == "-":
                continue  # a connection that sent no request (the start-up probe)
            lines.append(LogLine(int(client.rsplit(":", 1)[1]), method, url, int(status), user))
        return lines

    def wait_for(self, count: int, method: str | None = None) -> list[LogLine]:
        """The access log's lines (of `method`), once there are at least `count` of them."""
        deadline = time.monotonic() + LOG_TIMEOUT
        while True:
            lines = [line for line in self.requests() if method in (None, line.method)]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(POLL_SECONDS)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(LOG_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def running_squid(
    hosts: Iterable[str], user: str = "corp", password: str = "s3cret-pw"
) -> Iterator[Squid]:
    squid = Squid(hosts, user, password)
    try:
        yield squid
    finally:
        squid.stop()
