"""The shared tier's two candidate clients side by side against a real S3 server (SeaweedFS on
loopback, started here): obstore (Rust's object_store; blocking calls in trio worker threads,
as it has no trio support) and what transcache ships, botocore's credential chain and SigV4
signing over the proxy's own trio HTTP client (`transcache.tiers.s3.S3Bucket`).

    python -m benchmarks.s3_clients [--large-mib 64] [--small 200]

Measures the throughput of one large object up and down (obstore: its own multipart upload
and streamed get; ours: multipart from the file and a streamed get), the latency of small
objects (PUT then GET, one at a time: what a miss pays), and whether each client obeys the
environment's proxy variables (they point at transcache itself in a proxied shell, so the tier
must not). Numbers vary with the machine's load: compare the two columns of one run."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from tests.s3server import S3Server, aws_environment, running_s3
from transcache._config import Config
from transcache.tiers.bucket import Location
from transcache.tiers.s3 import S3Bucket, find_endpoint

MiB = 1024 * 1024
SMALL_BYTES = 2048
DEAD_PROXY = "http://127.0.0.1:9"


class Ours:
    name = "botocore + trio"

    def __init__(self, server: S3Server, prefix: str) -> None:
        config = Config(shared_cache=f"s3://{server.bucket}/{prefix}", shared_cache_timeout=30)
        self.bucket = S3Bucket(Location(server.bucket, prefix), config, find_endpoint())

    async def put_file(self, name: str, path: Path, size: int) -> None:
        await self.bucket.put_file(name, path, size)

    async def put(self, name: str, data: bytes) -> None:
        await self.bucket.put(name, data)

    async def get(self, name: str) -> int:
        body = await self.bucket.get(name)
        assert body is not None
        size = 0
        while chunk := await body.read():
            size += len(chunk)
        return size


class Obstore:
    name = "obstore (threads)"

    def __init__(self, server: S3Server, prefix: str) -> None:
        from obstore.store import S3Store

        self.prefix = prefix
        self.store = S3Store(
            server.bucket,
            endpoint=server.endpoint,
            region="us-east-1",
            skip_signature=True,
            client_options={"allow_http": True},
        )

    async def put_file(self, name: str, path: Path, size: int) -> None:
        import obstore

        await trio.to_thread.run_sync(
            lambda: obstore.put(self.store, f"{self.prefix}/{name}", path, chunk_size=16 * MiB)
        )

    async def put(self, name: str, data: bytes) -> None:
        import obstore

        await trio.to_thread.run_sync(obstore.put, self.store, f"{self.prefix}/{name}", data)

    async def get(self, name: str) -> int:
        import obstore

        def read() -> int:
            result = obstore.get(self.store, f"{self.prefix}/{name}")
            return sum(len(chunk) for chunk in result.stream(min_chunk_size=MiB))

        return await trio.to_thread.run_sync(read)


Client = Ours | Obstore


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def measure(client: Client, large: Path, size: int, small: int) -> dict[str, str]:
    up = await timed(lambda: client.put_file("large", large, size))
    down = await timed(lambda: client.get("large"))
    puts, gets = [], []
    for n in range(small):
        data = os.urandom(SMALL_BYTES)
        puts.append(await timed(lambda n=n, data=data: client.put(f"small-{n}", data)))  # type: ignore[misc]
        gets.append(await timed(lambda n=n: client.get(f"small-{n}")))  # type: ignore[misc]
    return {
        "put MiB/s": f"{size / MiB / up:.0f}",
        "get MiB/s": f"{size / MiB / down:.0f}",
        "small put ms (median/p95)": _ms(puts),
        "small get ms (median/p95)": _ms(gets),
    }


async def obeys_proxy_variables(client: Client) -> bool:
    """Whether a GET fails with the proxy variables pointing at a dead port."""
    saved = {name: os.environ.get(name) for name in ("HTTP_PROXY", "http_proxy")}
    os.environ.update(HTTP_PROXY=DEAD_PROXY, http_proxy=DEAD_PROXY)
    try:
        with trio.fail_after(30):
            await client.get("small-0")
    except Exception:
        return True
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.update({name: value})
    return False


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"{statistics.median(ordered) * 1000:.1f}/{p95 * 1000:.1f}"


async def main(large_mib: int, small: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, running_s3(Path(tmp) / "s3") as server:
        os.environ.update(aws_environment(server.endpoint, Path(tmp)))
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            os.environ.pop(name, None)
        large = Path(tmp) / "large"
        large.write_bytes(os.urandom(large_mib * MiB))
        rows = []
        for client in (Obstore(server, "obstore"), Ours(server, "ours")):
            row = await measure(client, large, large_mib * MiB, small)
            row["obeys HTTP_PROXY"] = str(await obeys_proxy_variables(client))
            rows.append((client.name, row))
        load = os.getloadavg()[0]
        print(f"{large_mib} MiB object, {small} of {SMALL_BYTES} bytes; load {load:.1f}")
        for name, row in rows:
            print(f"{name:20} " + "  ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument("--small", type=int, default=200)
    args = parser.parse_args()
    trio.run(main, args.large_mib, args.small)
