"""A CI fleet in miniature, for docs/team.md: several jobs, each a cache with an empty local
dir, fetch the same set of files from an origin with added latency. Three ways to share:

- cold: nothing shared, every job asks the origin;
- bucket: one shared tier (a real SeaweedFS on loopback); the first job fills it, the others
  read it after their local misses;
- archive: the first job exports its cache (`cache export`), the others import the whole
  archive first (what a CI cache action restores), then fetch.

    python -m benchmarks.tier_fleet [--jobs 4] [--files 300] [--latency 0.05]

The caches run in-process (the cache layer, not the proxy's sockets) in front of a scripted
origin whose every request costs `--latency` seconds and whose bodies arrive at
`--bandwidth` MiB/s; the job's wall time is what is reported."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import trio

from tests.s3server import aws_environment, running_s3
from transcache._config import Config
from transcache._protocol import Headers, Origin
from transcache._upstream import BodyReader
from transcache.cache import Cache, CacheRequest
from transcache.store import Store
from transcache.store.archive import export_archive, import_archive

MiB = 1024 * 1024
ORIGIN = Origin("https", "files.test", 443)
IMMUTABLE: Headers = [(b"Cache-Control", b"max-age=31536000, immutable")]
PIECE = 64 * 1024


class SlowAnswer:
    def __init__(self, size: int, bandwidth: float) -> None:
        self.status, self.reason = 200, b"OK"
        self.headers: Headers = [*IMMUTABLE, (b"Content-Length", str(size).encode())]
        self._left = size
        self._bandwidth = bandwidth

    async def read(self) -> bytes:
        if not self._left:
            return b""
        piece = min(PIECE, self._left)
        self._left -= piece
        await trio.sleep(piece / self._bandwidth)
        return b"x" * piece

    async def aclose(self) -> None:
        pass


class SlowOrigin:
    def __init__(self, latency: float, bandwidth: float) -> None:
        self.latency, self.bandwidth = latency, bandwidth
        self.requests = 0

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodyReader | None,
    ) -> SlowAnswer:
        self.requests += 1
        await trio.sleep(self.latency)
        return SlowAnswer(int(target.decode().rsplit("-", 1)[1]), self.bandwidth)


def workload(files: int) -> list[str]:
    """Mostly small files (index pages, metadata), a few large ones (wheels, tarballs)."""
    small = [f"/f{n}-{20 * 1024 + n}" for n in range(files)]
    large = [f"/large{n}-{8 * MiB + n}" for n in range(max(1, files // 50))]
    return small + large


async def job(
    root: Path, origin: SlowOrigin, paths: list[str], shared: str | None, archive: Path | None
) -> float:
    started = time.perf_counter()
    config = Config(cache_dir=root, ca_dir=root / "ca", shared_cache=shared)
    store = Store(root, config.max_size)
    if archive is not None:
        await trio.to_thread.run_sync(import_archive, store, archive)
    async with trio.open_nursery() as nursery:
        cache = Cache(config, store, origin)
        await nursery.start(cache.run)
        async with trio.open_nursery() as fetchers:
            limit = trio.CapacityLimiter(8)  # a package manager's parallel downloads
            for path in paths:
                fetchers.start_soon(fetch, cache, path, limit)
        await cache.downloads.wait_idle()
        took = time.perf_counter() - started
        if cache.shared is not None:
            await cache.shared.tier.wait_idle()  # uploads run behind the job's last request
        nursery.cancel_scope.cancel()
    return took


async def fetch(cache: Cache, path: str, limit: trio.CapacityLimiter) -> None:
    async with limit:
        source, _ = await cache.respond(CacheRequest(b"GET", ORIGIN, path, []))
        try:
            while await source.read():
                pass
        finally:
            await source.aclose()


async def fleet(args: argparse.Namespace, tmp: Path, bucket: str) -> None:
    paths = workload(args.files)
    print(
        f"{args.jobs} jobs, {len(paths)} files, origin latency {args.latency * 1000:.0f} ms, "
        f"{args.bandwidth:g} MiB/s; load {os.getloadavg()[0]:.1f}"
    )
    for way in ("cold", "bucket", "archive"):
        origin = SlowOrigin(args.latency, args.bandwidth * MiB)
        shared = f"s3://{bucket}/{way}-{time.monotonic_ns()}" if way == "bucket" else None
        archive = tmp / f"{way}.tar.gz" if way == "archive" else None
        times = [await job(tmp / way / "0", origin, paths, shared, None)]
        if archive is not None:
            started = time.perf_counter()
            export_archive(Store(tmp / way / "0", 10 * 1024**3), archive)
            times[0] += time.perf_counter() - started
        for n in range(1, args.jobs):
            times.append(await job(tmp / way / str(n), origin, paths, shared, archive))
        later = sum(times[1:]) / len(times[1:])
        print(
            f"{way:8} first job {times[0]:6.2f} s, each later job {later:6.2f} s, "
            f"origin requests {origin.requests}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--bandwidth", type=float, default=50.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_s3(Path(tmp) / "s3") as server:
        os.environ.update(aws_environment(server.endpoint, Path(tmp)))
        trio.run(fleet, args, Path(tmp), server.bucket)


if __name__ == "__main__":
    main()
