"""HTTP/2 and gRPC on the wire: the constants, structs and header blocks both ends use.

A public module: the server speaks these, and the benchmarks' lean clients
(benchmarks/h2client.py, h2watch.py) build and read their frames with them.
Our header blocks use only HPACK's static table and literals that are never
indexed, so what we send never touches either side's dynamic table.
"""

from __future__ import annotations

import base64
import struct
from urllib.parse import quote

import grpc

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 0xB
# settings
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6

# flow-control windows: the largest allowed, and every window's size until SETTINGS or WINDOW_UPDATE
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535

FRAME_HEADER = struct.Struct(">HBBBL")  # 24-bit length as 16+8 bits, type, flags, stream id
U32 = struct.Struct(">L")
MESSAGE_PREFIX = struct.Struct(">BL")  # gRPC message prefix: compressed flag, length


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(s: bytes) -> bytes:
    return hpack_int(len(s), 7) + s


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, new name: no state in
    either side's dynamic table."""
    return b"\x00" + hpack_str(name) + hpack_str(value)


# ':status: 200' is static entry 8; 'content-type' is static name 31
RESPONSE_HEADERS = b"\x88" + hpack_int(31, 4) + hpack_str(b"application/grpc")
OK_TRAILERS = literal(b"grpc-status", b"0")
# a request that is not gRPC's (grpc-go's answer): ':status: 415' with the static table's name 8
UNSUPPORTED_MEDIA_TYPE = hpack_int(8, 4) + hpack_str(b"415") + RESPONSE_HEADERS[1:]


def status_block(code: grpc.StatusCode, details: str, trailing_metadata=()) -> bytes:
    """The trailers' header block ending a call with `code`."""
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if details:
        # percent-encoded, as the gRPC spec asks for anything outside printable ASCII
        block += literal(b"grpc-message", quote(details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
    for key, value in trailing_metadata:
        key = key.encode() if isinstance(key, str) else key
        if key.endswith(b"-bin"):  # binary values travel base64-encoded, unpadded
            value = base64.b64encode(value).rstrip(b"=")
        elif isinstance(value, str):
            value = value.encode()
        block += literal(key, value)
    return block
