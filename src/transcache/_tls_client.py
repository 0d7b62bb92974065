"""TLS to origins, read in large pieces.

trio's SSLStream hands out at most one TLS record (16 KiB) per receive and yields to the
scheduler for each, so a large download costs a wake-up, an h11 parse and a disk write per
record. This client-side stream decrypts every record already buffered, up to the size asked
for, and refills from the transport RECEIVE_SIZE bytes at a time: one wake-up carries as many
records as the kernel holds.

It serves one task at a time (the upstream pool runs one exchange per connection: send the
request, then read the answer), so unlike trio's it needs no locks. Its failures look like
trio's: `trio.BrokenResourceError` caused by the ssl error, which `translate_errors` maps.
"""

from __future__ import annotations

import contextlib
import ssl

import trio

# Ciphertext asked of the transport per read, and plaintext handed out per receive at most.
RECEIVE_SIZE = 1024 * 1024


class TLSClientStream(trio.abc.Stream):
    def __init__(self, transport: trio.abc.Stream, context: ssl.SSLContext, hostname: str) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_hostname=hostname)

    async def do_handshake(self) -> None:
        """Handshake and verify the origin's certificate (before any data goes either way)."""
        while True:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._refill()
                continue
            except (ssl.SSLError, ssl.CertificateError) as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
            await self._flush()
            return

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = RECEIVE_SIZE if max_bytes is None else max_bytes
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            data = self._decrypt(limit)
            if data:
                await self._flush()  # reading may have produced an answer (a key update)
            if data is not None:
                return data
            await self._refill()

    def _decrypt(self, limit: int) -> bytes | None:
        """Every byte already decryptable, up to `limit`; b"" at the end of the stream, None
        when a record is still incomplete."""
        pieces: list[bytes] = []
        size = 0
        ended = False
        try:
            while size < limit:
                piece = self._ssl.read(limit - size)
                if not piece:  # close_notify
                    ended = True
                    break
                pieces.append(piece)
                size += len(piece)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLEOFError:
            # The origin closed without close_notify, as many HTTPS servers do. The alert
            # OpenSSL queued in reply has no one to go to: sending it would fail the read.
            ended = True
            self._outgoing.read()
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS failed: {exc}") from exc
        if pieces:
            return b"".join(pieces) if len(pieces) > 1 else pieces[0]
        return b"" if ended else None

    async def _refill(self) -> None:
        data = await self.transport.receive_some(RECEIVE_SIZE)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def _flush(self) -> None:
        if self._outgoing.pending:
            await self.transport.send_all(self._outgoing.read())

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS failed: {exc}") from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send close_notify if the connection still works (without waiting for the
        origin's), then close the transport."""
        try:
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._flush()
        finally:
            await self.transport.aclose()
