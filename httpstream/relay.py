"""An upgraded request passed on: the kubelet sends kubectl's exec to the runtime's streaming
server, the apiserver sends it to the kubelet, as Kubernetes' UpgradeAwareHandler does. The
request head goes on (rewritten), then bytes flow both ways untouched until either side ends:
the answer (101 and the WebSocket, or an HTTP error) is the far server's own.

Each direction copies at most COPY_CHUNK bytes at a time and waits for the other side to
drain before reading more, so a peer that stops reading stops its sender, nothing buffers.
"""

from __future__ import annotations

import asyncio
import contextlib

COPY_CHUNK = 64 * 1024
CONNECT_TIMEOUT = 5.0


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, half_close: bool) -> None:
    try:
        while True:
            data = await reader.read(COPY_CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def open_upstream(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the far server; OSError (ConnectionError, TimeoutError) when it does not answer."""
    async with asyncio.timeout(CONNECT_TIMEOUT):
        return await asyncio.open_connection(host, port)


async def relay(client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter], head: bytes) -> None:
    """Send ``head`` upstream, then copy both ways. Ends when the upstream side closes (the
    client's end of input is passed on as a half-close); closes both connections."""
    (c_reader, c_writer), (u_reader, u_writer) = client, upstream
    try:
        u_writer.write(head)
        await u_writer.drain()
        up = asyncio.ensure_future(_copy(c_reader, u_writer, half_close=True))
        down = asyncio.ensure_future(_copy(u_reader, c_writer, half_close=False))
        try:
            await down
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
    except (ConnectionError, OSError):
        pass
    finally:
        for w in (u_writer, c_writer):
            w.close()
        for w in (u_writer, c_writer):
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()
