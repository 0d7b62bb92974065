"""`transcache run` as the end-to-end tests use it: a real subprocess on 127.0.0.1:0, started
with the test origins' CA trusted upstream and `.test` names resolved to loopback.

`ProxyProcess.start(...)` returns once the proxy printed its listening line (every worker
listens then); it serves in one process unless `workers` says otherwise. `env()` gives the
variables a client needs (the proxy printed them; we take them from the same function), and
`stop()` sends SIGTERM and expects a clean exit.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from transcache._launch import client_environment, listening_url, run_command, server_environment

STOP_TIMEOUT = 15.0


def _limit_fds(limit: tuple[int, int]) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, limit)

    return apply


class ProxyProcess:
    def __init__(self, process: subprocess.Popen[str], url: str, workdir: Path) -> None:
        self.process = process
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.workdir = workdir
        self.ca_dir = workdir / "ca"
        self.ca_pem = self.ca_dir / "ca.pem"
        self.bundle = self.ca_dir / "bundle.pem"
        self.log_path = workdir / "proxy.log"
        self.killed = False

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        upstream_ca: Iterable[Path] = (),
        resolve: Iterable[tuple[str, int]] = (),
        args: Iterable[str] = (),
        fd_limit: tuple[int, int] | None = None,
        workers: int = 1,
    ) -> Self:
        """Start `transcache run`; each (host, port) in `resolve` reaches 127.0.0.1.
        `fd_limit` is the (soft, hard) RLIMIT_NOFILE the proxy starts with; `workers` its
        serving processes (`process` is then their supervisor)."""
        workdir.mkdir(parents=True, exist_ok=True)
        command = run_command(
            workdir / "ca",
            workdir / "cache",
            upstream_ca=upstream_ca,
            resolve={name: "127.0.0.1" for name in resolve},
            args=["--workers", str(workers), *args],
        )
        env = server_environment(os.environ)
        log = (workdir / "proxy.log").open("ab")
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            preexec_fn=None if fd_limit is None else _limit_fds(fd_limit),
        )
        log.close()
        assert process.stdout is not None
        line = process.stdout.readline()
        url = listening_url(line)
        if url is None:
            process.kill()
            process.wait()
            log_text = (workdir / "proxy.log").read_text()
            raise RuntimeError(f"proxy did not start: {line!r}\n{log_text}")
        return cls(process, url, workdir)

    def env(self) -> dict[str, str]:
        """Proxy and CA variables for a client (both cases, as `transcache run` prints)."""
        return client_environment(self.url, self.bundle, self.ca_pem)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def log_lines(self, needle: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        """Log lines containing `needle`, once there are `count` of them: the proxy writes
        an access line just after the response's last byte, so a client can be faster."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log.splitlines() if needle in line]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def peak_rss_bytes(self) -> int:
        """The process's peak resident set size so far (VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc status")

    def kill(self) -> None:
        """SIGKILL, as a crash would; `stop()` then reports the kill instead of failing."""
        self.process.kill()
        self.process.wait()
        self.killed = True

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
