"""httpstream's pieces alone, on loopback sockets of the test's own event loop: RFC 6455
framing and its limits, the channel.k8s.io dispatch (v5's close signal), SPDY/3.1 frames and
header blocks (the SPDY/3 dictionary), the upgrade relay."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib

import pytest

from httpstream import channels, relay, spdy, websocket
from httpstream.http import parse_head


def test_accept_key_is_rfc_6455s_example():
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _head(**headers) -> object:
    lines = [b"GET /x HTTP/1.1"] + [f"{k}: {v}".encode() for k, v in headers.items()]
    return parse_head(lines)


def test_upgrade_checks_and_protocol_choice():
    good = {"Connection": "keep-alive, Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": "v5.channel.k8s.io, v4.channel.k8s.io"}
    head = _head(**good)
    assert websocket.check_upgrade(head) is None
    assert websocket.choose_protocol(head, channels.PROTOCOLS) == "v5.channel.k8s.io"
    assert websocket.choose_protocol(_head(**dict(good, **{"Sec-WebSocket-Protocol": "v4.channel.k8s.io"})),
                                     channels.PROTOCOLS) == "v4.channel.k8s.io"
    assert websocket.choose_protocol(_head(**dict(good, **{"Sec-WebSocket-Protocol": "v3.channel.k8s.io"})),
                                     channels.PROTOCOLS) is None
    assert "Sec-WebSocket-Version" in websocket.check_upgrade(_head(**dict(good, **{"Sec-WebSocket-Version": "8"})))
    assert "Sec-WebSocket-Key" in websocket.check_upgrade(_head(**dict(good, **{"Sec-WebSocket-Key": "short"})))
    assert "upgrade" in websocket.check_upgrade(_head(**dict(good, Connection="keep-alive")))


async def _pair(**server_options):
    """A server WebSocket and the raw client streams talking to it."""
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def accept(reader, writer):
        got.set_result(websocket.WebSocket(reader, writer, **server_options))
    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ws = await got
    return server, ws, reader, writer


async def _read_frame(reader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", await reader.readexactly(8))[0]
    assert not b1 & 0x80, "a server's frames are not masked"
    return b0 & 0x0F, await reader.readexactly(n)


def test_fragments_pings_and_the_closing_handshake():
    async def run():
        server, ws, reader, writer = await _pair()
        writer.write(websocket.encode_frame(websocket.TEXT, b"hel", mask=True, fin=False))
        writer.write(websocket.encode_frame(websocket.PING, b"p1", mask=True))  # between fragments
        writer.write(websocket.encode_frame(websocket.CONT, b"lo", mask=True))
        big = bytes(range(256)) * 300  # 76800 bytes: the 64-bit length form
        writer.write(websocket.encode_frame(websocket.BINARY, big, mask=True))
        writer.write(websocket.encode_frame(websocket.CLOSE, struct.pack(">H", 1000), mask=True))
        assert await ws.recv() == (websocket.TEXT, b"hello")
        assert await _read_frame(reader) == (websocket.PONG, b"p1")
        assert await ws.recv() == (websocket.BINARY, big)
        assert await ws.recv() is None
        assert ws.close_received == 1000
        assert await _read_frame(reader) == (websocket.CLOSE, struct.pack(">H", 1000))
        writer.close()
        server.close()
    asyncio.run(run())


@pytest.mark.parametrize("frame,code", [
    (websocket.encode_frame(websocket.BINARY, b"x", mask=False), websocket.PROTOCOL_ERROR),   # unmasked
    (websocket.encode_frame(websocket.BINARY, b"x" * 2000, mask=True), websocket.TOO_BIG),    # over max_frame
    (websocket.encode_frame(websocket.TEXT, b"\xff\xfe", mask=True), websocket.INVALID_DATA),  # not UTF-8
    (websocket.encode_frame(websocket.CONT, b"x", mask=True), websocket.PROTOCOL_ERROR),      # nothing to continue
    (bytes([0x80 | 0x40 | websocket.BINARY, 0x80]) + b"\0\0\0\0", websocket.PROTOCOL_ERROR),  # RSV1
], ids=["unmasked", "over-max-frame", "not-utf8", "nothing-to-continue", "rsv1"])  # fixed: the masks are random
def test_a_broken_peer_gets_the_rfcs_close_code(frame, code):
    async def run():
        server, ws, reader, writer = await _pair(max_frame=1000)
        writer.write(frame)
        with pytest.raises(websocket.ProtocolError):
            await ws.recv()
        opcode, payload = await _read_frame(reader)
        assert (opcode, struct.unpack(">H", payload[:2])[0]) == (websocket.CLOSE, code)
        writer.close()
        server.close()
    asyncio.run(run())


def test_a_message_over_the_limit_is_refused_even_in_small_fragments():
    async def run():
        server, ws, reader, writer = await _pair(max_frame=100, max_message=250)
        for _ in range(3):
            writer.write(websocket.encode_frame(websocket.BINARY if _ == 0 else websocket.CONT, b"y" * 100,
                                                mask=True, fin=False))
        with pytest.raises(websocket.ProtocolError):
            await ws.recv()
        writer.close()
        server.close()
    asyncio.run(run())


def test_channels_dispatch_stdin_resize_and_v5s_close_signal():
    async def run(protocol: str):
        server, ws, reader, writer = await _pair(subprotocol=protocol)
        events = []

        async def stdin(data):
            events.append(("stdin", data))

        async def end():
            events.append(("end",))

        async def resize(size):
            events.append(("resize", size.width, size.height))
        for payload in (b"\x00abc", b"\x04" + json.dumps({"Width": 120, "Height": 40}).encode(),
                        b"\x04not json", b"\x07ignored", b"\xff\x00", b"\x00after"):
            writer.write(websocket.encode_frame(websocket.BINARY, payload, mask=True))
        writer.write(websocket.encode_frame(websocket.CLOSE, b"\x03\xe8", mask=True))
        session = channels.ChannelSession(ws)
        await session.read_input(stdin, end, resize)
        writer.close()
        server.close()
        return events
    v5 = asyncio.run(run(channels.V5))
    assert v5 == [("stdin", b"abc"), ("resize", 120, 40), ("end",)]  # stdin after the close signal is dropped
    v4 = asyncio.run(run(channels.V4))
    assert v4 == [("stdin", b"abc"), ("resize", 120, 40), ("stdin", b"after"), ("end",)]  # v4: no close signal


def test_finish_while_the_input_reader_still_waits():
    """An exec whose command ended while its stdin reader still waits for the client: finish()
    writes the status and awaits the client's close beside that reader. Two waiters on one
    asyncio.StreamReader are refused with a RuntimeError (readexactly() called while another
    coroutine is already waiting), which the runtime logged after every such exec."""
    async def run():
        server, ws, reader, writer = await _pair(subprotocol=channels.V5)
        session = channels.ChannelSession(ws)
        events, typed = [], asyncio.Event()

        async def stdin(data):
            events.append(("stdin", data))
            typed.set()

        async def end():
            events.append(("end",))
        inputs = asyncio.ensure_future(session.read_input(stdin, end, lambda size: asyncio.sleep(0)))
        writer.write(websocket.encode_frame(websocket.BINARY, b"\x00typed", mask=True))
        await asyncio.wait_for(typed.wait(), 5)  # the reader took the stdin and waits for the next frame
        finish = asyncio.ensure_future(session.finish(channels.success()))
        assert await _read_frame(reader) == (websocket.BINARY, b"\x03" + json.dumps(channels.success(),
                                                                                  separators=(",", ":")).encode())
        assert (await _read_frame(reader))[0] == websocket.CLOSE
        writer.write(websocket.encode_frame(websocket.CLOSE, b"\x03\xe8", mask=True))
        await asyncio.wait_for(finish, 5)  # raised RuntimeError before readers took turns
        await asyncio.wait_for(inputs, 5)  # the reader saw the close too, and ended
        assert ws.close_received == 1000
        assert await ws.recv() is None  # the connection is over for any later reader
        assert await reader.read() == b""  # and closed by the server
        writer.close()
        server.close()
        return events
    assert asyncio.run(run()) == [("stdin", b"typed"), ("end",)]


def test_exit_status_is_what_client_go_reads_as_an_exit_code():
    st = channels.exit_status(3, ["sh", "-c", "exit 3"])
    assert st["reason"] == "NonZeroExitCode"
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert st["message"] == ("command terminated with non-zero exit code: error executing command "
                             "[sh -c exit 3], exit code 3")


def test_spdy_dictionary_and_header_blocks():
    assert zlib.adler32(spdy.DICTIONARY) == spdy.DICTIONARY_ADLER32 and len(spdy.DICTIONARY) == 1423
    comp = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=spdy.DICTIONARY)
    decomp = zlib.decompressobj(zdict=spdy.DICTIONARY)
    for headers in ({"streamtype": "data", "port": "80", "requestid": "0"}, {}, {"port": "8080"}):
        assert spdy.decode_headers(decomp, spdy.encode_headers(comp, headers)) == headers  # one zlib stream


class _SpdyClient:
    """The client's side, enough to drive ServerConnection (as spdystream frames it)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.comp = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=spdy.DICTIONARY)
        self.decomp = zlib.decompressobj(zdict=spdy.DICTIONARY)

    def control(self, ftype, flags, payload):
        self.writer.write(struct.pack(">HHI", 0x8003, ftype, (flags << 24) | len(payload)) + payload)

    def syn(self, sid, headers, fin=False):
        self.control(spdy.SYN_STREAM, spdy.FLAG_FIN if fin else 0,
                     struct.pack(">IIBB", sid, 0, 0, 0) + spdy.encode_headers(self.comp, headers))

    def data(self, sid, data, fin=False):
        self.writer.write(struct.pack(">II", sid, ((1 if fin else 0) << 24) | len(data)) + data)

    async def frame(self):
        first, second = struct.unpack(">II", await self.reader.readexactly(8))
        payload = await self.reader.readexactly(second & 0xFFFFFF)
        return first, second >> 24, payload


def test_spdy_streams_reply_carry_data_and_answer_pings():
    async def run():
        opened: list = []

        async def on_stream(stream):
            opened.append(stream)
            return stream.headers.get("streamtype") == "data"

        async def accept(reader, writer):
            conn = spdy.ServerConnection(spdy.RawTransport(reader, writer), on_stream)
            await conn.run()
        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        c = _SpdyClient(reader, writer)
        c.syn(1, {"streamtype": "data", "port": "80", "requestid": "0"})
        first, flags, payload = await c.frame()
        assert (first & 0xFFFF, flags, struct.unpack(">I", payload[:4])[0]) == (spdy.SYN_REPLY, 0, 1)
        assert spdy.decode_headers(c.decomp, payload[4:]) == {}
        c.syn(3, {"streamtype": "bogus"})  # refused: the reply carries FIN
        first, flags, payload = await c.frame()
        assert (first & 0xFFFF, flags) == (spdy.SYN_REPLY, spdy.FLAG_FIN)
        spdy.decode_headers(c.decomp, payload[4:])
        c.data(1, b"hello", fin=True)
        assert await opened[0].read() == b"hello"
        assert await opened[0].read() == b""
        await opened[0].write(b"back")
        first, flags, payload = await c.frame()
        assert (first, payload) == (1, b"back")
        c.control(spdy.PING, 0, struct.pack(">I", 7))
        first, flags, payload = await c.frame()
        assert (first & 0xFFFF, payload) == (spdy.PING, struct.pack(">I", 7))
        c.writer.write(struct.pack(">II", 1, spdy.MAX_FRAME_LENGTH + 1))  # too large: GOAWAY
        first, flags, payload = await c.frame()
        assert first & 0xFFFF == spdy.GOAWAY
        writer.close()
        server.close()
    asyncio.run(run())


def test_relay_passes_bytes_both_ways_and_the_clients_end():
    async def run():
        async def upstream_server(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + head.split(b"\r\n")[0])
            rest = await reader.read()  # until the client's half-close reaches here
            writer.write(b"|" + rest)
            await writer.drain()
            writer.close()
        up = await asyncio.start_server(upstream_server, "127.0.0.1", 0)
        up_port = up.sockets[0].getsockname()[1]

        async def front(reader, writer):
            upstream = await relay.open_upstream("127.0.0.1", up_port)
            await relay.relay((reader, writer), upstream, b"GET /exec/x HTTP/1.1\r\n\r\n")
        fr = await asyncio.start_server(front, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", fr.sockets[0].getsockname()[1])
        writer.write(b"payload")
        writer.write_eof()
        got = await reader.read()
        assert got == b"HTTP/1.1 101 Switching Protocols\r\n\r\nGET /exec/x HTTP/1.1|payload"
        up.close()
        fr.close()
    asyncio.run(run())


def test_the_runtimes_streaming_urls_are_one_time_and_expire(monkeypatch):
    from node.pb import cri_pb2
    from node.runtime import streaming

    async def get(port: int, path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        return data.split(b"\r\n", 1)[0]

    async def run():
        server = streaming.StreamServer()
        with pytest.raises(streaming.StreamError):  # not started: UNAVAILABLE
            server.url("exec", cri_pb2.ExecRequest(), None)
        port = await server.start()
        url = server.url("exec", cri_pb2.ExecRequest(cmd=["true"], stdout=True), None)
        path = url.split(str(port), 1)[1]
        assert url.startswith(f"http://127.0.0.1:{port}/exec/")
        assert await get(port, path) == b"HTTP/1.1 400 Bad Request"   # no upgrade, but the token is used
        assert await get(port, path) == b"HTTP/1.1 404 Not Found"     # used once
        monkeypatch.setattr(streaming, "TOKEN_TTL", -1.0)
        stale = server.url("exec", cri_pb2.ExecRequest(cmd=["true"], stdout=True), None)
        assert await get(port, stale.split(str(port), 1)[1]) == b"HTTP/1.1 404 Not Found"  # expired
        monkeypatch.setattr(streaming, "MAX_IN_FLIGHT", 2)
        monkeypatch.setattr(streaming, "TOKEN_TTL", 60.0)
        server.url("attach", cri_pb2.AttachRequest(), None)
        server.url("attach", cri_pb2.AttachRequest(), None)
        with pytest.raises(streaming.StreamError) as e:
            server.url("attach", cri_pb2.AttachRequest(), None)
        assert e.value.code == "RESOURCE_EXHAUSTED"
        await server.stop()
    asyncio.run(run())


def test_a_client_silent_past_the_idle_timeout_is_gone_and_pings_keep_it():
    async def run():
        server, ws, reader, writer = await _pair(subprotocol=channels.V5)
        session = channels.ChannelSession(ws)
        inputs = asyncio.ensure_future(session.read_input(_nothing, _nothing, _nothing, idle_timeout=0.3))
        for _ in range(6):  # 0.6 s of pings only: alive
            writer.write(websocket.encode_frame(websocket.PING, b"", mask=True))
            await asyncio.sleep(0.1)
        assert not inputs.done()
        await asyncio.wait_for(inputs, 2)  # then silence: gone
        frames = []
        while True:
            try:
                frames.append(await asyncio.wait_for(_read_frame(reader), 2))
            except (asyncio.IncompleteReadError, ConnectionError):
                break
        assert (websocket.CLOSE, struct.pack(">H", websocket.GOING_AWAY) + b"idle") in frames
        writer.close()
        server.close()
    asyncio.run(run())


async def _nothing(*_):
    return None
