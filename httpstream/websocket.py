"""WebSocket (RFC 6455) on an asyncio stream: the server's handshake, frames both ways.

What kubectl's streams need and no more: no extensions (a frame with RSV bits set fails the
connection), binary and text messages, fragmentation, ping/pong, the closing handshake. A
client's frames must be masked and a server's not (5.1). What one peer can make the other
hold is bounded: a frame's payload (MAX_FRAME) and a message assembled from fragments
(MAX_MESSAGE); past them the connection closes with 1009, as 7.4.1 names it. Writes wait for
the transport to drain, so a reader that does not read stops the writer rather than growing
a buffer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import time

from httpstream.http import RequestHead, response_bytes, status_body

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_FRAME = 1 << 20
MAX_MESSAGE = 1 << 20
# close codes (7.4.1)
NORMAL, GOING_AWAY, PROTOCOL_ERROR, INVALID_DATA, TOO_BIG, INTERNAL = 1000, 1001, 1002, 1007, 1009, 1011


class ProtocolError(Exception):
    """The peer broke RFC 6455; ``code`` is the close code to fail the connection with."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + GUID).digest()).decode()


def offered_protocols(req: RequestHead) -> list[str]:
    return [p.strip() for p in req.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]


def check_upgrade(req: RequestHead) -> str | None:
    """Why ``req`` is not a WebSocket opening handshake (4.2.1), or None when it is."""
    if req.method != "GET":
        return f"a WebSocket upgrade must be a GET, not {req.method}"
    if req.upgrade() != "websocket":
        return "the request asks for no WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)"
    if req.headers.get("sec-websocket-version", "") != "13":
        return "unsupported Sec-WebSocket-Version (13 is served)"
    key = req.headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        return "missing or malformed Sec-WebSocket-Key"
    return None


def choose_protocol(req: RequestHead, supported: list[str]) -> str | None:
    """The first subprotocol the client offers that we serve (the client lists them in its order
    of preference, as client-go does); None when none matches."""
    return next((p for p in offered_protocols(req) if p in supported), None)


def handshake_response(req: RequestHead, protocol: str) -> bytes:
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(req.headers['sec-websocket-key'])}"]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def refusal(code: int, message: str) -> bytes:
    """An HTTP answer refusing the upgrade, its body a Status (client-go shows its message)."""
    return response_bytes(code, status_body(code, message), "application/json")


def encode_frame(opcode: int, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 1 << 16:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def apply_mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ k).to_bytes(n, "big")


class WebSocket:
    """One WebSocket connection. ``client``: this end is the client (masks its frames, expects
    unmasked ones). ``send`` may be called from many tasks. ``recv`` is meant for one reader
    task, but ``shutdown`` reads too (the peer's close) and is called while that reader still
    waits (an exec whose command ended: its stdin reader is still blocked): readers take turns
    (an asyncio.StreamReader refuses a second waiter with a RuntimeError), and once the
    connection ended every later ``recv`` returns None at once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 client: bool = False, subprotocol: str = "", max_frame: int = MAX_FRAME,
                 max_message: int = MAX_MESSAGE) -> None:
        self.reader, self.writer = reader, writer
        self.client = client
        self.subprotocol = subprotocol
        self.max_frame, self.max_message = max_frame, max_message
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._ended = False  # the peer's close came, the connection ended or broke the protocol
        self.close_sent = False
        self.close_received: int | None = None
        self.last_seen = time.monotonic()  # when a frame (data or control) last began to arrive

    async def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        self.last_seen = time.monotonic()
        fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
        masked, n = bool(b1 & 0x80), b1 & 0x7F
        if rsv:
            raise ProtocolError("reserved bits set without a negotiated extension")
        if masked == self.client:
            raise ProtocolError("a client's frames must be masked, a server's must not")
        if n == 126:
            n = struct.unpack(">H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", await self.reader.readexactly(8))[0]
        if opcode >= 0x8:
            if not fin or n > 125:
                raise ProtocolError("control frames must be whole and at most 125 bytes")
        elif opcode not in (CONT, TEXT, BINARY):
            raise ProtocolError(f"unknown opcode {opcode:#x}")
        if n > self.max_frame:
            raise ProtocolError(f"frame of {n} bytes over the {self.max_frame} served", TOO_BIG)
        key = await self.reader.readexactly(4) if masked else b""
        payload = await self.reader.readexactly(n) if n else b""
        return fin, opcode, apply_mask(payload, key) if masked else payload

    async def recv(self) -> tuple[int, bytes] | None:
        """The next data message (TEXT or BINARY, payload), answering pings on the way; None once
        the peer closed (its close answered) or the connection ended. A protocol breach closes
        the connection with its code and raises ProtocolError."""
        async with self._read_lock:
            if self._ended:
                return None
            result = await self._recv()
            if result is None:
                self._ended = True
            return result

    async def _recv(self) -> tuple[int, bytes] | None:
        message: list[bytes] = []
        size, kind = 0, None
        try:
            while True:
                fin, opcode, payload = await self._frame()
                if opcode == PING:
                    await self.send(payload, PONG)
                    continue
                if opcode == PONG:
                    continue
                if opcode == CLOSE:
                    code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                    self.close_received = code
                    await self.close(NORMAL if code == 1005 else code)
                    return None
                if opcode == CONT:
                    if kind is None:
                        raise ProtocolError("a continuation frame with no message begun")
                elif kind is not None:
                    raise ProtocolError("a new message began before the last one ended")
                else:
                    kind = opcode
                size += len(payload)
                if size > self.max_message:
                    raise ProtocolError(f"message over the {self.max_message} bytes served", TOO_BIG)
                message.append(payload)
                if fin:
                    data = b"".join(message)
                    if kind == TEXT:
                        try:
                            data.decode("utf-8")
                        except UnicodeDecodeError:
                            raise ProtocolError("a text message that is not UTF-8", INVALID_DATA) from None
                    return kind, data
        except ProtocolError as e:
            self._ended = True
            await self.close(e.code, str(e)[:100])
            raise
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def send(self, payload: bytes, opcode: int = BINARY) -> None:
        """One message (one frame). ConnectionError once the connection is gone or closed."""
        if self.close_sent and opcode != CLOSE:
            raise ConnectionResetError("the WebSocket is closed")
        async with self._write_lock:
            if self.writer.is_closing():
                raise ConnectionResetError("the connection is closed")
            self.writer.write(encode_frame(opcode, payload, mask=self.client))
            await self.writer.drain()

    async def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Send a close frame (once); the caller ends the connection when it is done reading."""
        if self.close_sent:
            return
        self.close_sent = True
        try:
            await self.send(struct.pack(">H", code) + reason.encode()[:120], CLOSE)
        except (ConnectionError, RuntimeError):
            pass

    async def shutdown(self, code: int = NORMAL, timeout: float = 2.0) -> None:
        """Close the WebSocket and the connection: the peer's close is awaited briefly (7.1.1:
        the server closes TCP after the handshake), data still arriving is dropped."""
        await self.close(code)
        if self.close_received is None:
            try:
                async with asyncio.timeout(timeout):
                    while await self.recv() is not None:
                        pass
            except (asyncio.TimeoutError, ProtocolError):
                pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def connect(host: str, port: int, target: str, protocols: list[str],
                  headers: dict[str, str] | None = None) -> WebSocket:
    """A client's WebSocket to http://host:port<target> (for tests and tools); ConnectionError
    with the server's answer when it refuses the upgrade."""
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: Upgrade",
             "Upgrade: websocket", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Key: {key}"]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *rest = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in rest:
        k, _, v = line.partition(":")
        if k:
            fields[k.strip().lower()] = v.strip()
    if " 101 " not in status_line + " ":
        body = b""
        n = int(fields.get("content-length", "0") or 0)
        if n:
            body = await reader.readexactly(n)
        writer.close()
        raise ConnectionRefusedError(f"{status_line}: {body.decode(errors='replace')}")
    if fields.get("sec-websocket-accept") != accept_key(key):
        writer.close()
        raise ConnectionError("the server's Sec-WebSocket-Accept does not match the key")
    return WebSocket(reader, writer, client=True, subprotocol=fields.get("sec-websocket-protocol", ""))
