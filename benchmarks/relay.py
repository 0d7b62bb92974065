"""A TCP relay that delays every byte by a fixed time in each direction: the slow upstream's
round-trip latency, without touching the machine's network settings.

    python -m benchmarks.relay LISTEN_PORT TARGET_PORT DELAY_MS

Each direction is a reader that stamps chunks with the time they may leave and a writer that
waits for that time, so latency is added without cutting throughput (unlike a sleep per read).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

READ_SIZE = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while data := await reader.read(READ_SIZE):
            queue.put_nowait((loop.time() + delay, data))
        queue.put_nowait((loop.time() + delay, b""))

    async def write() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    await asyncio.gather(read(), write())


async def _serve(
    target_port: int, delay: float, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pump(reader, up_writer, delay), _pump(up_reader, writer, delay))
    except OSError:
        pass
    finally:
        writer.close()
        up_writer.close()


async def main(listen_port: int, target_port: int, delay_ms: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve(target_port, delay_ms / 1000, r, w), "127.0.0.1", listen_port
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, target, delay = sys.argv[1:4]
    asyncio.run(main(int(listen), int(target), float(delay)))
