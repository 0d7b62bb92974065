"""TLS to origins over trio memory streams: one receive hands out every record already
buffered, the end of the stream (with or without close_notify) is b"", and a certificate
that does not verify fails the handshake the way `translate_errors` expects."""

from __future__ import annotations

import contextlib
import os
import ssl
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from transcache._tls_client import TLSClientStream

HOST = "files.test"
RECORD = 16 * 1024  # the largest TLS record's plaintext


async def origin_handshake(server: trio.SSLStream[Any]) -> None:
    with contextlib.suppress(trio.BrokenResourceError):  # the client gave up on us
        await server.do_handshake()


async def connected(
    trusted: bool = True,
) -> tuple[TLSClientStream, trio.SSLStream[Any], trio.abc.Stream]:
    """A handshaken client, the origin's end, and the origin's transport."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    client_context = ssl.create_default_context()
    if trusted:
        ca.configure_trust(client_context)
    client_transport, server_transport = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_transport, server_context, server_side=True)
    client = TLSClientStream(client_transport, client_context, HOST)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(origin_handshake, server)
        await client.do_handshake()
    return client, server, server_transport


async def test_one_receive_returns_every_record_already_buffered() -> None:
    client, server, _ = await connected()
    body = os.urandom(16 * RECORD)
    await server.send_all(body)  # sixteen records, all in the client's transport by now
    assert await client.receive_some() == body


async def test_the_origins_close_notify_ends_the_stream() -> None:
    client, server, _ = await connected()
    await server.send_all(b"last bytes")
    await server.aclose()
    assert await client.receive_some() == b"last bytes"
    assert await client.receive_some() == b""


async def test_a_close_without_close_notify_ends_the_stream_too() -> None:
    client, server, transport = await connected()
    await server.send_all(b"last bytes")
    await transport.aclose()  # as many HTTPS servers do once the body is sent
    assert await client.receive_some() == b"last bytes"
    assert await client.receive_some() == b""


def caused_by_verification(error: trio.BrokenResourceError) -> bool:
    return isinstance(error.__cause__, ssl.SSLCertVerificationError)


async def test_an_untrusted_certificate_fails_the_handshake_with_its_cause() -> None:
    with pytest.RaisesGroup(
        pytest.RaisesExc(trio.BrokenResourceError, check=caused_by_verification)
    ):
        await connected(trusted=False)
