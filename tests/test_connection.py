"""The HTTP/1.1 connection loop in process, on the virtual clock: time limits on heads, idle
connections and bodies, error answers and the linger after them, malformed heads, keep-alive
and `Connection: close`."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from transcache._ca import CertificateAuthority
from transcache._config import Config
from transcache._server import ProxyServer

from .inprocess import connected


def make_server(tmp_path: Path) -> ProxyServer:
    config = Config(ca_dir=tmp_path / "ca", cache_dir=tmp_path / "cache")
    return ProxyServer(config, CertificateAuthority.load_or_create(config.ca_dir))


async def test_error_answer_to_a_connection_close_client_closes_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The client sent its whole request and said it is done: nothing to linger for.
    server = make_server(tmp_path)
    async with connected(server.handle) as client:
        started = trio.current_time()
        await client.send(b"DELETE /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        reply = await client.response()
        assert await client.read_until_closed() == b""
        await client.served.wait()  # the client keeps its end open, as a browser may
        assert trio.current_time() - started == 0
    assert reply.status == 405
