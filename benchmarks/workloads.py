"""W1..W6 (issue 7): what each one does to a peer, and what it records. W7, the test-suite
replay, is in replay.py; the soak in soak.py.

A workload takes a `Run` (the upstream, the settings) and one peer, and returns `Sample`s:
metric name -> value for one repetition. Cold means the peer was just `reset()` (empty cache,
fresh process); warm means the same thing again right after. Clients always run with their own
caches off (`--no-cache-dir`, `--no-cache`, a fresh HOME and target directory every time), so
what is measured is the network path: client -> peer -> upstream.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transcache._launch import ca_environment, proxy_environment

from . import procs
from .data import Content
from .peers import Peer
from .upstream import NAMES, NEW_HOST_SUFFIX, Upstream

Sample = dict[str, float]
CLIENT_TIMEOUT = 900.0
IDLE_SETTLE = 0.5  # seconds after start before idle RSS is read
PARALLEL = 32
NEW_HOSTS = 10  # W5: handshakes to never-seen hosts per repetition
KNOWN_HANDSHAKES = 50  # W5: handshakes to one known host per repetition
KNOWN_HOST = f"known.{NEW_HOST_SUFFIX}"
INDEX_HOST, FILES_HOST, GIT_HOST = NAMES
MB = 1_000_000
UV = Path(sys.executable).parent / "uv"  # the test extra's, next to this interpreter


@dataclass
class Run:
    upstream: Upstream
    content: Content
    scratch: Path
    repeats: int
    soak_minutes: float = 10.0  # W8

    def hosts(self) -> list[str]:
        """Every `.test` name a workload will use (peers resolve each to the upstream)."""
        fresh = [new_host(r, i) for r in range(self.repeats) for i in range(NEW_HOSTS)]
        return [*NAMES, KNOWN_HOST, *fresh]


def new_host(repeat: int, number: int) -> str:
    return f"n{repeat}x{number}.{NEW_HOST_SUFFIX}"


@contextmanager
def _tempdir(run: Run) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="client-", dir=run.scratch))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def client_env(peer: Peer, home: Path) -> dict[str, str]:
    """Nothing from this machine's configuration; the peer's CA and proxy; no client caches."""
    ca = peer.client_ca
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_CERT": str(ca),
        "UV_NO_CONFIG": "1",
        "UV_NO_CACHE": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        **ca_environment(ca, ca),
    }
    if peer.proxy_url:
        env.update(proxy_environment(peer.proxy_url))
    return env


def _run(command: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, str]:
    """Run a client; return (wall seconds, stdout). A failure raises with what it printed."""
    start = time.perf_counter()
    result = subprocess.run(
        command,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        printed = result.stderr[-1500:] or result.stdout[-1500:]
        raise RuntimeError(f"{command[0]} exited {result.returncode}: {printed}")
    return elapsed, result.stdout


def _cold_warm(run: Run, peer: Peer, once: Callable[[], Sample]) -> Sample:
    """Reset the peer, run `once` twice (cold, then warm) and count upstream requests of each."""
    peer.reset()
    sample: Sample = {}
    for phase in ("cold", "warm"):
        mark = run.upstream.mark()
        for key, value in once().items():
            sample[f"{phase}_{key}"] = value
        requests, connections = run.upstream.requests_since(mark)
        sample[f"{phase}_upstream"] = requests
        sample[f"{phase}_upstream_conns"] = connections
    return sample


# --- W1: pip and uv install the requirement set -----------------------------------------------


def w1_install(tool: str) -> Callable[[Run, Peer], Sample]:
    def measure(run: Run, peer: Peer) -> Sample:
        requirements = run.content.requirements
        if requirements is None:
            raise SkipWorkload("no wheels in this dataset")

        def once() -> Sample:
            index = peer.url(INDEX_HOST, "/simple/")  # after the reset: a peer's port may move
            with _tempdir(run) as tmp:
                env = client_env(peer, tmp)
                target = str(tmp / "target")
                if tool == "uv":
                    command = [
                        str(UV),
                        "pip",
                        "install",
                        "--quiet",
                        "--no-cache",
                        "--python",
                        sys.executable,
                        "--target",
                        target,
                        "--index-url",
                        index,
                        "-r",
                        str(requirements),
                    ]
                else:
                    command = [
                        sys.executable,
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--no-cache-dir",
                        "--no-compile",
                        "--only-binary=:all:",
                        "--target",
                        target,
                        "--index-url",
                        index,
                        "-r",
                        str(requirements),
                    ]
                seconds, _ = _run(command, env)
            return {"s": seconds}

        return _cold_warm(run, peer, once)

    return measure


class SkipWorkload(Exception):
    """The workload does not apply (to this dataset or peer)."""


# --- W2: one big file with curl ---------------------------------------------------------------


def w2_big_file(run: Run, peer: Peer) -> Sample:
    peer.reset()
    url = peer.url(FILES_HOST, run.content.big_path)
    time.sleep(IDLE_SETTLE)
    idle = procs.tree_rss_bytes(peer.pid) if peer.pid else 0
    sample: Sample = {}
    peak = 0
    for phase in ("cold", "warm"):
        mark = run.upstream.mark()
        with _tempdir(run) as tmp, procs.RssSampler(peer.pid) as rss:
            _, out = _run(
                [
                    "curl",
                    "--silent",
                    "--show-error",
                    "--fail",
                    "--http1.1",
                    "--output",
                    "/dev/null",
                    "--write-out",
                    "%{size_download} %{time_total}",
                    url,
                ],
                client_env(peer, tmp),
            )
        size, seconds = (float(x) for x in out.split())
        if size != run.content.dataset.big_bytes:
            raise RuntimeError(f"got {size:.0f} bytes, expected {run.content.dataset.big_bytes}")
        sample[f"{phase}_mbps"] = size / seconds / MB
        sample[f"{phase}_upstream"] = run.upstream.requests_since(mark)[0]
        peak = max(peak, rss.peak)
    if peer.pid:
        sample["rss_growth_mb"] = max(0, peak - idle) / MB
    return sample


# --- W3: small pages, one keep-alive connection and 32 in parallel ----------------------------


def _pages(run: Run, peer: Peer, parallel: bool, tmp: Path) -> Sample:
    config = tmp / "urls.cfg"
    with config.open("w") as lines_out:
        for number in range(run.content.dataset.pages):
            lines_out.write(f'url = "{peer.url(FILES_HOST, run.content.page_path(number))}"\n')
            lines_out.write('output = "/dev/null"\n')
    command = [
        "curl",
        "--silent",
        "--show-error",
        "--http1.1",
        "--config",
        str(config),
        "--write-out",
        "%{http_code} %{time_total} %{num_connects}\n",
    ]
    if parallel:
        command += ["--parallel", "--parallel-immediate", "--parallel-max", str(PARALLEL)]
    seconds, out = _run(command, client_env(peer, tmp))
    lines = [line.split() for line in out.splitlines()]
    bad = [line for line in lines if line[0] != "200"]
    if bad or len(lines) != run.content.dataset.pages:
        raise RuntimeError(f"{len(bad)} failed of {len(lines)}: {bad[:3]}")
    latencies = sorted(float(line[1]) * 1000 for line in lines)
    return {
        "rps": len(lines) / seconds,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "connections": sum(int(line[2]) for line in lines),
    }


def w3_pages(parallel: bool) -> Callable[[Run, Peer], Sample]:
    def measure(run: Run, peer: Peer) -> Sample:
        def once() -> Sample:
            with _tempdir(run) as tmp, procs.RssSampler(peer.pid) as rss:
                sample = _pages(run, peer, parallel, tmp)
            if peer.pid:
                sample["rss_peak_mb"] = rss.peak / MB
            return sample

        return _cold_warm(run, peer, once)

    return measure


# --- W4: git clone ----------------------------------------------------------------------------


def w4_clone(run: Run, peer: Peer) -> Sample:
    def once() -> Sample:
        url = peer.url(GIT_HOST, run.content.repo_path)
        with _tempdir(run) as tmp:
            seconds, _ = _run(
                ["git", "clone", "--quiet", url, str(tmp / "clone")], client_env(peer, tmp)
            )
        return {"s": seconds}

    return _cold_warm(run, peer, once)


# --- W5: TLS handshakes -----------------------------------------------------------------------


def _handshake(run: Run, peer: Peer, host: str, context: ssl.SSLContext) -> tuple[float, float]:
    """(ms to a completed TLS handshake through the peer, ms to the first small response)."""
    port = run.upstream.port
    start = time.perf_counter()
    address = ("127.0.0.1", peer.port) if peer.proxied else peer.origin_address()
    sock = socket.create_connection(address)
    # As curl, urllib3 and hyper do; without it Nagle holds the request behind an unacknowledged
    # handshake segment for a delayed ACK (~40 ms) on some peers.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if peer.proxied:
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"{peer.name} closed the CONNECT to {host}")
            head += chunk
        if head.split(b" ", 2)[1] != b"200":
            raise RuntimeError(f"CONNECT {host}: {head[:100]!r}")
    with context.wrap_socket(sock, server_hostname=host) as tls:
        shaken = time.perf_counter()
        page = run.content.page_path(0)
        tls.sendall(f"GET {page} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        response = http.client.HTTPResponse(tls)
        response.begin()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET https://{host}{page}: {response.status}")
        done = time.perf_counter()
    return (shaken - start) * 1000, (done - start) * 1000


def w5_handshakes(run: Run, peer: Peer, repeat: int) -> Sample:
    peer.reset()  # a process of its own (and its own profile); names are new per repetition
    context = ssl.create_default_context(cafile=str(peer.client_ca))
    new = [_handshake(run, peer, new_host(repeat, i), context) for i in range(NEW_HOSTS)]
    _handshake(run, peer, KNOWN_HOST, context)
    start = time.perf_counter()
    known = [_handshake(run, peer, KNOWN_HOST, context) for _ in range(KNOWN_HANDSHAKES)]
    elapsed = time.perf_counter() - start
    return {
        "new_ms": statistics.median(h for h, _ in new),
        "new_first_response_ms": statistics.median(r for _, r in new),
        "known_ms": statistics.median(h for h, _ in known),
        "known_per_s": KNOWN_HANDSHAKES / elapsed,
    }


# --- W6: memory -------------------------------------------------------------------------------


def w6_memory(run: Run, peer: Peer) -> Sample:
    if not peer.pid:
        raise SkipWorkload("no process of its own")
    peer.reset()
    time.sleep(IDLE_SETTLE)
    idle = procs.tree_rss_bytes(peer.pid)
    with _tempdir(run) as tmp, procs.RssSampler(peer.pid) as rss:
        _pages(run, peer, True, tmp)
        _pages(run, peer, True, tmp)
    return {"idle_mb": idle / MB, "w3_peak_mb": rss.peak / MB}
