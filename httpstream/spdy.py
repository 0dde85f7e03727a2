"""SPDY/3.1 framing, the server's side, as far as Kubernetes' port-forward uses it.

kubectl port-forward opens, for each local connection, two SPDY streams (headers
``streamtype: error|data``, ``port``, ``requestid``); the server replies to each (SYN_REPLY)
and carries bytes on them as DATA frames, FIN ending a direction. Header blocks are zlib
streams primed with the SPDY/3 dictionary, one stream per direction for the whole connection.
kubectl's SPDY library (moby/spdystream) neither sends nor honours WINDOW_UPDATE, so neither
does this side; what one peer can make us hold is bounded instead: a frame's length
(MAX_FRAME_LENGTH), a decompressed header block (MAX_HEADER_BLOCK), the frames queued per
stream (STREAM_QUEUE: the connection's reader waits while a stream's consumer is behind),
the streams open at once (MAX_STREAMS).

The bytes come from a ``Transport``: the upgraded TCP connection itself, or the binary
messages of a WebSocket that tunnels them (``SPDY/3.1+portforward.k8s.io``, kubectl 1.32's
default), see ``RawTransport`` and ``WebSocketTransport``.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from httpstream.websocket import BINARY, WebSocket

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
# RST_STREAM status codes
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, CANCEL, INTERNAL_ERROR = 1, 2, 3, 5, 6
MAX_FRAME_LENGTH = 1 << 20
MAX_HEADER_BLOCK = 64 * 1024
MAX_STREAMS = 1000
STREAM_QUEUE = 16
DATA_CHUNK = 32 * 1024

# The SPDY/3 header dictionary (draft-mbelshe-httpbis-spdy-00 2.6.10.1): these words ("|"
# between them), each after its 4-byte length, then the text below.
_DICTIONARY_WORDS = (
    "options|head|post|put|delete|trace|accept|accept-charset|accept-encoding|"
    "accept-language|accept-ranges|age|allow|authorization|cache-control|connection|"
    "content-base|content-encoding|content-language|content-length|content-location|"
    "content-md5|content-range|content-type|date|etag|expect|expires|from|host|if-match|"
    "if-modified-since|if-none-match|if-range|if-unmodified-since|last-modified|location|"
    "max-forwards|pragma|proxy-authenticate|proxy-authorization|range|referer|retry-after|"
    "server|te|trailer|transfer-encoding|upgrade|user-agent|vary|via|warning|"
    "www-authenticate|method|get|status|200 OK|version|HTTP/1.1|url|public|set-cookie|"
    "keep-alive|origin")
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")


def _dictionary() -> bytes:
    words = _DICTIONARY_WORDS.split("|")
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + _DICTIONARY_TAIL.encode()


DICTIONARY = _dictionary()
DICTIONARY_ADLER32 = 0xE3C6A7C2  # what every SPDY/3 peer's zlib header names


class SpdyError(Exception):
    """The peer broke the protocol; the connection ends (GOAWAY)."""


class Transport(Protocol):
    """Where a connection's bytes come from and go."""

    async def read(self) -> bytes:
        """The next bytes; b"" at the end."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class RawTransport:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self) -> bytes:
        try:
            return await self.reader.read(64 * 1024)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()


class WebSocketTransport:
    """SPDY's bytes in binary WebSocket messages (client-go's TunnelingConnection: no framing
    of its own, a message is any run of bytes)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def read(self) -> bytes:
        while True:
            msg = await self.ws.recv()
            if msg is None:
                return b""
            if msg[1]:
                return msg[1]

    async def write(self, data: bytes) -> None:
        await self.ws.send(data, BINARY)

    async def close(self) -> None:
        await self.ws.shutdown()


def encode_headers(compressor, headers: dict[str, str]) -> bytes:
    block = struct.pack(">I", len(headers))
    for k, v in headers.items():
        kb, vb = k.lower().encode(), v.encode()
        block += struct.pack(">I", len(kb)) + kb + struct.pack(">I", len(vb)) + vb
    return compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)


def decode_headers(decompressor, data: bytes) -> dict[str, str]:
    block = decompressor.decompress(data, MAX_HEADER_BLOCK)
    if decompressor.unconsumed_tail:
        raise SpdyError(f"a header block over {MAX_HEADER_BLOCK} bytes")
    try:
        (n,) = struct.unpack_from(">I", block, 0)
        pos, out = 4, {}
        for _ in range(n):
            (ln,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4:pos + 4 + ln].decode("latin-1")
            pos += 4 + ln
            (lv,) = struct.unpack_from(">I", block, pos)
            out[name] = block[pos + 4:pos + 4 + lv].decode("latin-1")
            pos += 4 + lv
    except struct.error:
        raise SpdyError("a malformed header block") from None
    return out


class Stream:
    """One SPDY stream the client opened: its headers, the data it sends (``read``: b"" once
    it sent FIN or reset), and writes back."""

    def __init__(self, conn: ServerConnection, sid: int, headers: dict[str, str]) -> None:
        self.conn, self.id, self.headers = conn, sid, headers
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(STREAM_QUEUE)
        self.remote_closed = False
        self.local_closed = False
        self.reset = False

    async def read(self) -> bytes:
        if self.reset:
            return b""
        data = await self._queue.get()
        return data

    async def write(self, data: bytes) -> None:
        if self.local_closed or self.reset:
            raise ConnectionResetError(f"SPDY stream {self.id} is closed")
        for i in range(0, len(data), DATA_CHUNK):
            await self.conn.send_data(self.id, data[i:i + DATA_CHUNK])

    async def close(self) -> None:
        """Half-close: FIN (no more data from this side)."""
        if not self.local_closed and not self.reset:
            self.local_closed = True
            await self.conn.send_data(self.id, b"", fin=True)
            self.conn.forget_if_done(self)

    def _end(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            try:
                self._queue.put_nowait(b"")
            except asyncio.QueueFull:  # a reader is behind: it gets the end after the data
                asyncio.ensure_future(self._queue.put(b""))


class ServerConnection:
    """The server's end of a SPDY/3.1 connection. ``on_stream(stream)`` is awaited for each
    stream the client opens, before the reply: it returns False to refuse the stream (the
    reply carries FIN, as Kubernetes' SPDY server does for a stream it rejects)."""

    def __init__(self, transport: Transport, on_stream: Callable[[Stream], Awaitable[bool]]) -> None:
        self.transport = transport
        self.on_stream = on_stream
        self.streams: dict[int, Stream] = {}
        self._compressor = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=DICTIONARY)
        self._decompressor = zlib.decompressobj(zdict=DICTIONARY)
        self._write_lock = asyncio.Lock()
        self._buf = bytearray()
        self._eof = False
        self.last_stream = 0

    async def _readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if self._eof:
                raise EOFError
            data = await self.transport.read()
            if not data:
                self._eof = True
                raise EOFError
            self._buf += data
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def _write(self, frame: bytes) -> None:
        async with self._write_lock:
            await self.transport.write(frame)

    @staticmethod
    def _control(ftype: int, flags: int, payload: bytes) -> bytes:
        return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload

    async def send_data(self, sid: int, data: bytes, fin: bool = False) -> None:
        await self._write(struct.pack(">II", sid & 0x7FFFFFFF, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data)

    async def send_reply(self, sid: int, fin: bool = False) -> None:
        async with self._write_lock:  # the compressor's order is the frames' order
            block = encode_headers(self._compressor, {})
            await self.transport.write(self._control(SYN_REPLY, FLAG_FIN if fin else 0,
                                                     struct.pack(">I", sid) + block))

    async def send_reset(self, sid: int, status: int) -> None:
        await self._write(self._control(RST_STREAM, 0, struct.pack(">II", sid, status)))

    def forget_if_done(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            self.streams.pop(stream.id, None)

    async def run(self) -> None:
        """Read frames until the client goes (EOF or GOAWAY) or breaks the protocol."""
        try:
            while True:
                head = await self._readexactly(8)
                first, second = struct.unpack(">II", head)
                flags, length = second >> 24, second & 0xFFFFFF
                if length > MAX_FRAME_LENGTH:
                    raise SpdyError(f"a frame of {length} bytes (at most {MAX_FRAME_LENGTH} served)")
                payload = await self._readexactly(length) if length else b""
                if first & 0x80000000:
                    version, ftype = (first >> 16) & 0x7FFF, first & 0xFFFF
                    if version != VERSION:
                        raise SpdyError(f"SPDY version {version} (3 is served)")
                    if not await self._control_frame(ftype, flags, payload):
                        return
                else:
                    await self._data_frame(first & 0x7FFFFFFF, flags, payload)
        except (EOFError, ConnectionError):
            pass
        except SpdyError:
            try:
                await self._write(self._control(GOAWAY, 0, struct.pack(">II", self.last_stream, 1)))
            except (ConnectionError, OSError):
                pass
        finally:
            for s in list(self.streams.values()):
                s.reset = True
                s._end()

    async def _control_frame(self, ftype: int, flags: int, payload: bytes) -> bool:
        if ftype == SYN_STREAM:
            if len(payload) < 10:
                raise SpdyError("a short SYN_STREAM")
            sid = struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF
            headers = decode_headers(self._decompressor, payload[10:])
            if sid in self.streams or sid % 2 == 0 or sid <= self.last_stream:
                await self.send_reset(sid, PROTOCOL_ERROR)
                return True
            self.last_stream = sid
            if len(self.streams) >= MAX_STREAMS:
                await self.send_reset(sid, REFUSED_STREAM)
                return True
            stream = Stream(self, sid, headers)
            self.streams[sid] = stream
            accepted = await self.on_stream(stream)
            await self.send_reply(sid, fin=not accepted)
            if not accepted:
                stream.local_closed = True
            if flags & FLAG_FIN:
                stream._end()
            if not accepted:
                self.forget_if_done(stream)
        elif ftype == RST_STREAM:
            if len(payload) >= 8:
                sid = struct.unpack_from(">I", payload, 0)[0] & 0x7FFFFFFF
                stream = self.streams.pop(sid, None)
                if stream is not None:
                    stream.reset = True
                    stream._end()
        elif ftype == PING:
            await self._write(self._control(PING, 0, payload[:4]))
        elif ftype == GOAWAY:
            return False
        elif ftype == HEADERS and len(payload) >= 4:
            decode_headers(self._decompressor, payload[4:])  # keeps the zlib stream in step
        # SETTINGS, WINDOW_UPDATE: nothing to do (no flow control, as spdystream)
        return True

    async def _data_frame(self, sid: int, flags: int, payload: bytes) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            await self.send_reset(sid, INVALID_STREAM)
            return
        if payload:
            await stream._queue.put(payload)
        if flags & FLAG_FIN:
            stream._end()
            self.forget_if_done(stream)

    async def goaway(self) -> None:
        try:
            await self._write(self._control(GOAWAY, 0, struct.pack(">II", self.last_stream, 0)))
        except (ConnectionError, OSError):
            pass
