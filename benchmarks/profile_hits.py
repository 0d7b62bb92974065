"""cProfile of warm hits: what one small hit costs the proxy, in calls and microseconds.

    python -m benchmarks.profile_hits [--hits 2000] [--size 4096] [--top 25]

A threaded TLS origin (trustme, stdlib http.server) serves small pages with `max-age`; the
proxy runs in this process's trio thread (`open_proxy`), and curl fetches every page through
one CONNECT tunnel and one keep-alive connection twice: once to fill the cache, then again
under cProfile. Only the trio thread is profiled (cProfile is per thread), and curl is another
process, so the numbers are the proxy's own: the per-hit totals, trio scheduler turns
(`trio._core` checkpoints) and the functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import http.server
import pstats
import socketserver
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio
import trustme

from transcache import open_proxy

HOST = "files.test"
# Time the kernel spends, not Python: left out of the second per-hit figure, which is the one
# to compare between runs on a busy machine.
WAITS = ("method 'send' of '_socket.socket'", "method 'poll' of 'select.epoll'")


class _Pages(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    size = 4096

    def do_GET(self) -> None:
        body = (self.path.encode() * (self.size // len(self.path) + 1))[: self.size]
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "public, max-age=600")
        self.send_header("ETag", f'"{hash(self.path) & 0xFFFFFF:x}"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class TaskSteps(trio.abc.Instrument):
    """Counts scheduler turns: every time a task runs until its next suspension."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def _origin(ca: trustme.CA, size: int) -> _Server:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    _Pages.size = size
    server = _Server(("127.0.0.1", 0), _Pages)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def _curl(proxy: str, ca_path: Path, urls: list[str], tmp: Path) -> None:
    config = tmp / "urls.curl"
    config.write_text("".join(f'url = "{url}"\noutput = "/dev/null"\n' for url in urls))
    await trio.run_process(
        ["curl", "-sSf", "--proxy", proxy, "--cacert", str(ca_path), "--config", str(config)]
    )


async def profile(hits: int, size: int, steps: TaskSteps) -> cProfile.Profile:
    ca = trustme.CA()
    origin = _origin(ca, size)
    port = origin.server_address[1]
    urls = [f"https://{HOST}:{port}/pages/{n}" for n in range(hits)]
    profiler = cProfile.Profile(time.process_time)  # CPU time: waiting for a core is not ours
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        ca_pem = tmp / "origin-ca.pem"
        ca.cert_pem.write_to_path(str(ca_pem))
        options: dict[str, Any] = {
            "cache_dir": tmp / "cache",
            "ca_dir": tmp / "ca",
            "upstream_ca": [ca_pem],
            "resolve": [f"{HOST}:{port}:127.0.0.1"],
        }
        async with open_proxy(**options) as proxy:
            await _curl(proxy.url, proxy.ca_path, urls, tmp)  # fill
            trio.lowlevel.add_instrument(steps)
            profiler.enable()
            await _curl(proxy.url, proxy.ca_path, urls, tmp)
            profiler.disable()
            trio.lowlevel.remove_instrument(steps)
    origin.shutdown()
    return profiler


def report(profiler: cProfile.Profile, steps: TaskSteps, hits: int, top: int) -> None:
    stats = pstats.Stats(profiler)
    raw = stats.stats  # type: ignore[attr-defined]
    calls = sum(entry[1] for entry in raw.values())
    total = sum(entry[2] for entry in raw.values())
    checkpoints = sum(
        entry[1]
        for (path, _, function), entry in raw.items()
        if "trio/_core" in path and function in ("checkpoint", "checkpoint_if_cancelled")
    )
    waits = sum(
        entry[2]
        for (_, _, function), entry in raw.items()
        if any(name in function for name in WAITS)
    )
    print(f"{hits} hits, per hit: {calls / hits:.0f} calls, {total / hits * 1e6:.0f} µs profiled")
    print(f"({(total - waits) / hits * 1e6:.0f} µs without socket sends and epoll waits), ")
    print(f"{checkpoints / hits:.1f} trio checkpoints, {steps.steps / hits:.1f} task steps")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats("transcache", top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--dump", type=Path, help="also write the raw profile (pstats) here")
    args = parser.parse_args()
    steps = TaskSteps()
    profiler = trio.run(profile, args.hits, args.size, steps)
    if args.dump:
        profiler.dump_stats(args.dump)
    report(profiler, steps, args.hits, args.top)


if __name__ == "__main__":
    main()
