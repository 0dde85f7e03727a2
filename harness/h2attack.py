"""A raw HTTP/2 attacker and its bystander, for the abuse suite (tests/test_h2_abuse.py).

A well-behaved client library never sends what an attack needs (frames past a
window, HEADERS without their end, a reset for every request, a socket that is
never read), so the attacker writes frames by hand on a plain blocking socket,
built with grpclite.wire's helpers, and reads what the server answers only when
the test asks it to. Every send and read is bounded by a deadline: an attack
that the server throttles (by no longer reading) shows up as a stalled send,
never as a hung test. The bystander is the healthy client on its own
connection whose latency, and the server's resident memory, are what an
attack must not move. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import NamedTuple

import grpc
import hpack

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness.etcd_client import Client
from grpclite.wire import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    MESSAGE_PREFIX,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    U32,
    hpack_int,
    hpack_str,
    literal,
)

ENHANCE_YOUR_CALM = 0xB  # RFC 9113 error code (not one grpclite.wire names)
ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
               4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
               8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
               12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}

KV_RANGE = "/etcdserverpb.KV/Range"
KV_PUT = "/etcdserverpb.KV/Put"
WATCH = "/etcdserverpb.Watch/Watch"
LEASE_KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"


# --- frames -------------------------------------------------------------------------


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEADER.pack(n >> 8 & 0xFFFF, n & 0xFF, ftype, flags, sid) + payload


def settings_frame(values: dict[int, int] | None = None) -> bytes:
    """SETTINGS with the given values: settings_frame({S_INITIAL_WINDOW_SIZE: 0})."""
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HL", k, v) for k, v in (values or {}).items()))


def request_block(path: str, authority: bytes = b"127.0.0.1",
                  content_type: bytes = b"application/grpc") -> bytes:
    """A gRPC request's header block: static-table references and never-indexed literals."""
    return (b"\x83\x86"  # :method POST, :scheme http
            + hpack_int(4, 4) + hpack_str(path.encode())  # :path
            + hpack_int(1, 4) + hpack_str(authority)  # :authority
            + hpack_int(31, 4) + hpack_str(content_type)
            + literal(b"te", b"trailers"))


def header_frames(sid: int, block: bytes, max_frame: int, end_stream: bool = False) -> bytes:
    """A header block as HEADERS and as many CONTINUATION frames as the peer's frame size asks for."""
    parts = [block[i:i + max_frame] for i in range(0, len(block), max_frame)] or [b""]
    flags = (END_HEADERS if len(parts) == 1 else 0) | (END_STREAM if end_stream else 0)
    first = frame(HEADERS, flags, sid, parts[0])
    return first + b"".join(frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, sid, part)
                            for i, part in enumerate(parts) if i)


def message(request) -> bytes:
    """A gRPC message: the length prefix and the serialized request (or raw bytes)."""
    raw = request if isinstance(request, (bytes, bytearray)) else request.SerializeToString()
    return MESSAGE_PREFIX.pack(0, len(raw)) + raw


def call(sid: int, path: str, request, end_stream: bool = True) -> bytes:
    """HEADERS and one DATA frame: a whole request (a stream left open unless end_stream)."""
    return (frame(HEADERS, END_HEADERS, sid, request_block(path))
            + frame(DATA, END_STREAM if end_stream else 0, sid, message(request)))


class Frame(NamedTuple):
    type: int
    flags: int
    sid: int
    payload: bytes

    @property
    def code(self) -> int | None:
        """The error code of a GOAWAY or RST_STREAM."""
        if self.type == GOAWAY and len(self.payload) >= 8:
            return U32.unpack_from(self.payload, 4)[0]
        if self.type == RST_STREAM and len(self.payload) >= 4:
            return U32.unpack_from(self.payload)[0]
        return None


def split_frames(data: bytes) -> list[Frame]:
    """The whole frames in data, in order (a partial one at the end is left out)."""
    out, pos = [], 0
    while len(data) - pos >= 9:
        hi, lo, ftype, flags, sid = FRAME_HEADER.unpack_from(data, pos)
        end = pos + 9 + ((hi << 8) | lo)
        if end > len(data):
            break
        out.append(Frame(ftype, flags, sid & 0x7FFFFFFF, bytes(data[pos + 9:end])))
        pos = end
    return out


# --- the attacker -----------------------------------------------------------------


class Attacker:
    """One raw connection. Sends are bounded by a deadline (a server that stops
    reading stalls them); what the server sent is read only by read()."""

    def __init__(self, endpoint: str, rcvbuf: int | None = None, connect_timeout: float = 5.0):
        host, port = endpoint.rsplit(":", 1)
        if host != "127.0.0.1":
            raise ValueError(f"the attacker talks to 127.0.0.1 only, not {host}")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the TCP window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(connect_timeout)
        self.sock.connect((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = bytearray()
        self.frames: list[Frame] = []
        self.server_settings: dict[int, int] = {}
        self.statuses: dict[int, tuple[int, str]] = {}  # sid -> (grpc-status, grpc-message)
        self.data_bytes: dict[int, int] = {}  # sid -> DATA payload bytes the server sent on it
        self.closed = False  # the server closed (or reset) the connection, as a send or a read found
        self.eof = False  # a read found it: nothing more will come
        self.sent = 0
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = 1 << 24
        self._block: tuple[int, list[bytes]] | None = None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Attacker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- sending ------------------------------------------------------------------

    def send(self, data: bytes, seconds: float = 5.0) -> bool:
        """Send data within `seconds`; False if the server stopped reading (the
        send stalled) or closed the connection first. self.sent counts what left."""
        view = memoryview(data)
        deadline = time.monotonic() + seconds
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _, writable, _ = select.select([], [self.sock], [], min(left, 0.2))
            if not writable:
                continue
            try:
                n = self.sock.send(view[:1 << 20])
            except (BrokenPipeError, ConnectionResetError):
                self.closed = True
                return False
            except BlockingIOError:
                continue
            self.sent += n
            view = view[n:]
        return True

    def send_many(self, chunks, seconds: float, reading: bool = False, stall: float = 1.0) -> int:
        """Send chunks one after another for at most `seconds`; how many went
        whole (fewer than given: the server stopped reading, so that a chunk
        could not leave within `stall` seconds, or closed). With `reading`,
        what the server sent is read between chunks (an attacker that does
        read, so a GOAWAY is not lost in a reset connection)."""
        deadline = time.monotonic() + seconds
        for count, chunk in enumerate(chunks):
            if not self.send(chunk, min(stall, deadline - time.monotonic())):
                return count
            if reading:
                self.read(timeout=0)
        return len(chunks)

    def handshake(self, settings: bytes = b"", read_settings: bool = True, open_watch: bool = False) -> None:
        """The preface and our SETTINGS (settings_frame(...), default empty);
        with read_settings, wait for the server's SETTINGS into server_settings.
        open_watch: open a Watch call on stream 1 at once, so the attack comes
        from a connection with a call in progress, as a real client's would
        (what grpc-go tolerates, pings for one, depends on it)."""
        self.send(PREFACE + (settings or settings_frame())
                  + (frame(HEADERS, END_HEADERS, 1, request_block(WATCH)) if open_watch else b""))
        if read_settings:
            self.read(lambda f: f.type == SETTINGS and not f.flags & 1, timeout=5.0)

    # --- reading ------------------------------------------------------------------

    def read(self, until=None, timeout: float = 5.0) -> Frame | None:
        """Read frames until until(frame) is true (that frame is returned), the
        server closes, or `timeout` passes (None either way)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._cut_frames(until)
            if found is not None or self.eof:
                return found
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.sock], [], [], max(0.0, min(left, 0.2)))
            if not readable:
                if left <= 0:
                    return None
                continue
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except (ConnectionResetError, OSError):
                data = b""
            if not data:
                self.closed = self.eof = True
                continue
            self.buf += data

    def _cut_frames(self, until) -> Frame | None:
        buf, pos = self.buf, 0
        found = None
        while found is None and len(buf) - pos >= 9:
            hi, lo, ftype, flags, sid = FRAME_HEADER.unpack_from(buf, pos)
            end = pos + 9 + ((hi << 8) | lo)
            if end > len(buf):
                break
            f = Frame(ftype, flags, sid & 0x7FFFFFFF, bytes(buf[pos + 9:end]))
            pos = end
            self._seen(f)
            if until is not None and until(f):
                found = f
        del buf[:pos]
        return found

    def _seen(self, f: Frame) -> None:
        if f.type == DATA:  # the bulk of a flood's answers: counted, not kept
            self.data_bytes[f.sid] = self.data_bytes.get(f.sid, 0) + len(f.payload)
            return
        self.frames.append(f)
        if f.type == SETTINGS and not f.flags & 1 and not self.server_settings:
            for i in range(0, len(f.payload) - 5, 6):
                key, value = struct.unpack_from(">HL", f.payload, i)
                self.server_settings[key] = value
        elif f.type == HEADERS:
            self._block = (f.sid, [f.payload[1:len(f.payload) - f.payload[0]] if f.flags & 0x8 else f.payload])
            if f.flags & 0x20:
                self._block[1][0] = self._block[1][0][5:]
            if f.flags & END_HEADERS:
                self._headers_done()
        elif f.type == CONTINUATION and self._block is not None:
            self._block[1].append(f.payload)
            if f.flags & END_HEADERS:
                self._headers_done()

    def _headers_done(self) -> None:
        sid, parts = self._block
        self._block = None
        try:
            fields = dict(self._decoder.decode(b"".join(parts), raw=True))
        except Exception:  # noqa: BLE001  (a garbled answer is only not a status)
            return
        if b"grpc-status" in fields:
            details = fields.get(b"grpc-message", b"").decode("latin-1")
            self.statuses[sid] = (int(fields[b"grpc-status"]), details)

    def wait_error(self, timeout: float = 5.0) -> Frame | None:
        """The GOAWAY or RST_STREAM the server answers with (read until one
        comes, the connection closes or `timeout` passes)."""
        return self.read(lambda f: f.type in (GOAWAY, RST_STREAM), timeout)

    def goaway(self) -> Frame | None:
        return next((f for f in self.frames if f.type == GOAWAY), None)

    def resets(self) -> dict[int, int]:
        """sid -> the RST_STREAM code the server sent for it."""
        return {f.sid: f.code for f in self.frames if f.type == RST_STREAM}

    def describe(self) -> str:
        """What the server did to this connection, for the report."""
        parts = []
        g = self.goaway()
        if g is not None:
            parts.append(f"GOAWAY {ERROR_NAMES.get(g.code, g.code)} {g.payload[8:80]!r}")
        codes = sorted({ERROR_NAMES.get(c, c) for c in self.resets().values()})
        if codes:
            parts.append(f"RST_STREAM {'/'.join(codes)} x{len(self.resets())}")
        statuses = sorted({s for s, _ in self.statuses.values()})
        if statuses:
            parts.append(f"grpc-status {statuses}")
        if self.closed:
            parts.append("closed")
        return ", ".join(parts) or "nothing"


# --- the bystander ----------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The process's resident set (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Bystander:
    """A healthy grpcio client on its own connection, calling Range (and Put)
    in a thread while an attack runs, and the server's peak RSS sampled every
    10 ms in another (a stalled call must not stop the sampling).

        with Bystander(member.endpoint, member.pid) as b:
            attack()
        b.worst, b.failures, b.peak_rss - b.base_rss
    """

    def __init__(self, endpoint: str, pid: int, key: bytes = b"abuse/bystander", max_calls: int = 2000,
                 max_seconds: float = 60.0):
        self.client = Client(endpoint)
        self.pid = pid
        self.key = key
        self.max_calls, self.max_seconds = max_calls, max_seconds
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.base_rss = self.peak_rss = rss_bytes(pid)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]
        self.timed(lambda: self.client.put(key, b"v"))  # the connection is up before the attack

    def timed(self, fn) -> float:
        """Seconds one call took (a failure counts as never served)."""
        start = time.monotonic()
        try:
            fn()
        except grpc.RpcError as err:
            self.failures.append(f"{err.code().name}: {err.details()}")
            return float("inf")
        return time.monotonic() - start

    def served_within(self, seconds: float) -> float:
        """One Range and one Put, now: the slower one's latency (asserted by the caller)."""
        return max(self.timed(lambda: self.client.kv.Range(pb.RangeRequest(key=self.key), timeout=seconds)),
                   self.timed(lambda: self.client.kv.Put(pb.PutRequest(key=self.key, value=b"after"),
                                                         timeout=seconds)))

    def _call(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        n = 0
        while not self._stop.is_set() and n < self.max_calls and time.monotonic() < deadline:
            kv, key = self.client.kv, self.key
            if n % 2:
                self.latencies.append(self.timed(lambda: kv.Put(pb.PutRequest(key=key, value=b"v"), timeout=2)))
            else:
                self.latencies.append(self.timed(lambda: kv.Range(pb.RangeRequest(key=key), timeout=2)))
            n += 1
            self._stop.wait(0.02)

    def _sample(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._sample_rss()
            self._stop.wait(0.01)

    def _sample_rss(self) -> None:
        try:
            self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))
        except (OSError, RuntimeError):  # the server died: the latency says so
            pass

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    @property
    def growth(self) -> int:
        """How far the server's RSS rose above where it was when the bystander started."""
        self._sample_rss()
        return self.peak_rss - self.base_rss

    def __enter__(self) -> Bystander:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._sample_rss()

    def close(self) -> None:
        self.client.close()
