"""etcdlite's own gRPC server (grpclite/) at the protocol level:
what gRPC clients rely on beyond the etcd API (unknown methods, size limits,
flow control on big responses, deadlines, cancellation, compression, many
streams on one connection) and what a bad HTTP/2 peer gets (the connection
closed or a GOAWAY, never a crashed server). Everything runs against a real
member over TCP; the raw-socket tests speak HTTP/2 by hand."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import threading
import time

import grpc
import pytest

from harness.etcd_client import Client, error_of
from harness.procs import PYTHON, start_module_member
from etcdlite.config import DEFAULT_MAX_CONCURRENT_STREAMS
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc

MAX_REQUEST_BYTES = 64 * 1024
GRPC_LIMIT = MAX_REQUEST_BYTES + 512 * 1024  # what the gRPC layer accepts

# about etcdlite's server, not the etcd API: etcd (grpc-go) differs in the
# details checked here (it implements Auth, refuses gzip)
pytestmark = pytest.mark.skipif(os.environ.get("ETCDLITE_TEST_TARGET") == "etcd",
                                reason="tests etcdlite's own gRPC server")


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    reg, m = start_module_member(tmp_path_factory, "h2grpc", max_request_bytes=MAX_REQUEST_BYTES)
    yield m
    reg.cleanup()


@pytest.fixture
def c(member):
    with Client(member.endpoint) as client:
        yield client


@pytest.mark.process
def test_unknown_methods_are_unimplemented(c):
    for path in ("/etcdserverpb.KV/NoSuchMethod", "/no.such.Service/Method"):
        call = c.channel.unary_unary(path, request_serializer=lambda m: m, response_deserializer=lambda b: b)
        code, details = error_of(lambda: call(b"", timeout=5))
        assert code == grpc.StatusCode.UNIMPLEMENTED, (path, code, details)
    assert c.put(b"h2/after-unknown", b"v").header.revision > 0


@pytest.mark.process
def test_a_message_above_the_grpc_limit_is_refused_and_the_connection_keeps_serving(c):
    code, details = error_of(lambda: c.put(b"h2/huge", b"x" * (GRPC_LIMIT + 1)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "larger than max" in details
    # same channel, same connection: still served, nothing stored
    c.put(b"h2/small", b"v")
    assert c.get(b"h2/huge").count == 0
    assert c.get(b"h2/small").kvs[0].value == b"v"


@pytest.mark.process
def test_responses_far_larger_than_the_flow_control_windows(c):
    # 48 values of 60 KiB: a 2.9 MB range response, 45x the client's first window
    values = {b"h2/big/%02d" % i: bytes([65 + i % 26]) * (60 * 1024) for i in range(48)}
    for k, v in values.items():
        c.put(k, v)
    for _ in range(3):
        r = c.get(b"h2/big/", range_end=b"h2/big0")
        assert {kv.key: kv.value for kv in r.kvs} == values


@pytest.mark.process
def test_many_concurrent_calls_on_one_connection(member):
    async def main():
        async with grpc.aio.insecure_channel(member.endpoint) as ch:
            kv = rpc.KVStub(ch)
            puts = [kv.Put(pb.PutRequest(key=b"h2/many/%04d" % i, value=b"%d" % i), timeout=30) for i in range(1000)]
            done = await asyncio.gather(*puts)
            r = await kv.Range(pb.RangeRequest(key=b"h2/many/", range_end=b"h2/many0"), timeout=10)
            return done, r

    done, r = asyncio.run(main())
    assert len({resp.header.revision for resp in done}) == 1000  # 1,000 distinct writes
    assert r.count == 1000
    assert {kv.key: kv.value for kv in r.kvs}[b"h2/many/0999"] == b"999"


@pytest.mark.process
def test_deadline_of_a_stream_and_the_server_goes_on(c):
    stream = c.watch.Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"h2/dl"))]),
                           timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        for _ in stream:
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 5
    assert c.put(b"h2/dl", b"v").header.revision > 0


@pytest.mark.process
def test_a_cancelled_watch_stream_releases_its_watchers(c):
    def requests():
        yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"h2/cancel"))
        threading.Event().wait(30)  # keep the request side open

    stream = c.watch.Watch(requests())
    first = next(stream)
    assert first.created
    stream.cancel()
    with pytest.raises(grpc.RpcError) as err:
        next(stream)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    # the member goes on serving watches on the same connection
    stream2 = c.watch.Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"h2/cancel"))]),
                            timeout=10)
    assert next(stream2).created
    rev = c.put(b"h2/cancel", b"v").header.revision
    got = next(stream2)
    assert [e.kv.mod_revision for e in got.events] == [rev]
    stream2.cancel()


@pytest.mark.process
def test_gzip_compressed_requests(member):
    with grpc.insecure_channel(member.endpoint, compression=grpc.Compression.Gzip) as ch:
        kv = rpc.KVStub(ch)
        kv.Put(pb.PutRequest(key=b"h2/gzip", value=b"z" * 10_000), timeout=10)
        r = kv.Range(pb.RangeRequest(key=b"h2/gzip"), timeout=10)
    assert r.kvs[0].value == b"z" * 10_000


# --- raw HTTP/2 ---------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY, HEADERS, DATA = 4, 6, 7, 1, 0


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">HBBBL", n >> 8, n & 0xFF, ftype, flags, sid) + payload


def connect(member) -> socket.socket:
    host, port = member.endpoint.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    return s


def read_frames(s: socket.socket, until, timeout: float = 5.0):
    """Frames (type, flags, sid, payload) until `until(frame)` is true or the
    peer closes; returns (frames, closed)."""
    buf = b""
    frames = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while len(buf) >= 9:
            hi, lo, ftype, flags, sid = struct.unpack_from(">HBBBL", buf)
            n = (hi << 8) | lo
            if len(buf) < 9 + n:
                break
            f = (ftype, flags, sid & 0x7FFFFFFF, buf[9:9 + n])
            buf = buf[9 + n:]
            frames.append(f)
            if until(f):
                return frames, False
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return frames, True
        if not data:
            return frames, True
        buf += data
    raise AssertionError(f"no expected frame within {timeout}s; got {[f[:3] for f in frames]}")


@pytest.mark.process
def test_ping_is_answered(member, c):
    with connect(member) as s:
        s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(PING, 0, 0, b"12345678"))
        frames, _ = read_frames(s, lambda f: f[0] == PING)
        assert frames[-1] == (PING, 1, 0, b"12345678")


@pytest.mark.process
def test_not_http2_is_answered_as_http1(member, c):
    """A client that does not speak HTTP/2 gets etcd's HTTP/1.1 front (the gRPC gateway:
    etcdlite.server.gateway), and gRPC goes on."""
    with connect(member) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 404 ") and answer.endswith(b"404 page not found\n")
    assert c.put(b"h2/after-http1", b"v").header.revision > 0


@pytest.mark.process
def test_frame_too_large_gets_goaway(member, c):
    with connect(member) as s:
        # a DATA frame header announcing 16 MiB: above the 1 MiB we advertised
        s.sendall(PREFACE + frame(SETTINGS, 0, 0) + struct.pack(">HBBBL", 0xFFFF, 0xFF, DATA, 0, 1))
        frames, _ = read_frames(s, lambda f: f[0] == GOAWAY)
        code = struct.unpack(">L", frames[-1][3][4:8])[0]
        assert code == 6  # FRAME_SIZE_ERROR
    assert c.put(b"h2/after-goaway", b"v").header.revision > 0


@pytest.mark.process
def test_headers_interrupted_by_another_frame_gets_goaway(member, c):
    with connect(member) as s:
        # HEADERS without END_HEADERS must be followed by CONTINUATION
        s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0, 1, b"\x83") + frame(PING, 0, 0, b"x" * 8))
        frames, _ = read_frames(s, lambda f: f[0] == GOAWAY)
        code = struct.unpack(">L", frames[-1][3][4:8])[0]
        assert code == 1  # PROTOCOL_ERROR
    assert c.put(b"h2/after-protocol-error", b"v").header.revision > 0


@pytest.mark.process
def test_garbage_header_block_gets_goaway(member, c):
    with connect(member) as s:
        # 0xff 0xff...: an indexed field far beyond any table
        s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0x4 | 0x1, 1, b"\xff\xff\xff\xff\x0f"))
        frames, _ = read_frames(s, lambda f: f[0] == GOAWAY)
        code = struct.unpack(">L", frames[-1][3][4:8])[0]
        assert code == 9  # COMPRESSION_ERROR
    assert c.put(b"h2/after-bad-hpack", b"v").header.revision > 0


# --- the server on its own, with a servicer of the test's ----------------------------


def test_status_details_and_binary_trailing_metadata():
    """What the apiserver-style handlers rely on: set_trailing_metadata then abort
    keeps the metadata (binary values base64 on the wire, as gRPC says), and
    non-ASCII details arrive intact."""
    from grpclite import GrpcServer

    status_bytes = bytes(range(256))

    async def fail(request, context):
        context.set_trailing_metadata((("apiserver-status-bin", status_bytes),))
        await context.abort(grpc.StatusCode.NOT_FOUND, 'pods "x" not found — ünïcode')

    async def echo(request, context):
        return request + dict(context.invocation_metadata()).get("x-in-bin", b"")

    def handlers():
        return grpc.method_handlers_generic_handler("t.T", {
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
        })

    async def main():
        server = GrpcServer()
        server.add_generic_rpc_handlers((handlers(),))
        port = await server.listen("127.0.0.1", 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = ch.unary_unary("/t.T/Fail")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(b"x", timeout=5)
                echo_call = ch.unary_unary("/t.T/Echo")
                echoed = await echo_call(b"in:", metadata=(("x-in-bin", b"\x00\xff"),), timeout=5)
                return err.value, echoed
        finally:
            await server.stop(0)

    err, echoed = asyncio.run(main())
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == 'pods "x" not found — ünïcode'
    md = dict(err.trailing_metadata())
    assert md["apiserver-status-bin"] == status_bytes
    assert echoed == b"in:\x00\xff"


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "task"])
def test_unary_handlers_without_a_task_wait_and_are_cancelled_like_tasks(eager):
    """Unary handlers run without an asyncio.Task by default (_EagerCall): one
    that never waits answers at once, one that awaits futures (several times,
    with a bare yield between) answers when they are done, and one whose
    client's deadline passes or whose client cancels gets CancelledError at its
    await with the awaited future cancelled, as Task.cancel() does. The same
    checks pass with eager_unary=False (a Task per call)."""
    from grpclite import GrpcServer

    seen = []  # ("cancelled", name, awaited future cancelled?)
    pending: dict[str, asyncio.Future] = {}

    async def now(request, context):
        return b"now:" + request

    async def later(request, context):
        loop = asyncio.get_running_loop()
        total = b""
        for part in (b"a", b"b", b"c"):
            fut = loop.create_future()
            loop.call_later(0.01, fut.set_result, part)
            total += await fut
            await asyncio.sleep(0)
        return total + request

    async def never(request, context):
        fut = pending[request.decode()] = asyncio.get_running_loop().create_future()
        try:
            await fut
        except asyncio.CancelledError:
            seen.append(("cancelled", request.decode(), fut.cancelled()))
            raise
        return b"unreachable"

    def handlers():
        return grpc.method_handlers_generic_handler("t.T", {
            "Now": grpc.unary_unary_rpc_method_handler(now),
            "Later": grpc.unary_unary_rpc_method_handler(later),
            "Never": grpc.unary_unary_rpc_method_handler(never),
        })

    async def wait_for(cond):
        deadline = time.monotonic() + 5
        while not cond():
            assert time.monotonic() < deadline, "condition not reached in 5 s"
            await asyncio.sleep(0.01)

    async def main():
        server = GrpcServer(eager_unary=eager)
        server.add_generic_rpc_handlers((handlers(),))
        port = await server.listen("127.0.0.1", 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                assert await ch.unary_unary("/t.T/Now")(b"x", timeout=5) == b"now:x"
                answers = await asyncio.gather(*(ch.unary_unary("/t.T/Later")(b"%d" % i, timeout=5)
                                                 for i in range(20)))
                assert answers == [b"abc%d" % i for i in range(20)]
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary("/t.T/Never")(b"deadline", timeout=0.3)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                call = ch.unary_unary("/t.T/Never")(b"cancel", timeout=5)
                await wait_for(lambda: "cancel" in pending)
                call.cancel()
                await wait_for(lambda: len(seen) == 2)
                # the server still answers on the same connection
                assert await ch.unary_unary("/t.T/Now")(b"y", timeout=5) == b"now:y"
        finally:
            await server.stop(0)

    asyncio.run(main())
    assert sorted(seen) == [("cancelled", "cancel", True), ("cancelled", "deadline", True)]


def test_callback_handlers_reply_now_later_with_errors_and_after_a_deadline():
    """GrpcServer.set_unary_callback (how etcdlite serves Put): a handler
    that replies at once, one that replies from a later callback, one that
    replies with an error status, one that raises (INTERNAL, the server goes
    on), and one that replies after the client's deadline passed (ignored:
    the call already ended). With with_raw, the handler also gets the
    request's bytes as they came, beside the deserialized request."""
    from grpclite import GrpcServer

    late = []

    async def unused(request, context):  # the coroutine form other servers would run
        raise AssertionError("the callback serves this method")

    def now(request, reply):
        reply(b"now:" + request)

    def later(request, reply):
        asyncio.get_running_loop().call_later(0.01, reply, b"later:" + request)

    def refuse(request, reply):
        reply(None, grpc.StatusCode.FAILED_PRECONDITION, "no: " + request.decode())

    def broken(request, reply):
        raise ValueError("bug")

    def too_late(request, reply):
        def answer():
            reply(b"too late")
            late.append(True)
        asyncio.get_running_loop().call_later(0.5, answer)

    names = {"Now": now, "Later": later, "Refuse": refuse, "Broken": broken, "TooLate": too_late}

    async def main():
        server = GrpcServer()
        server.add_registered_method_handlers(
            "t.T", {n: grpc.unary_unary_rpc_method_handler(unused) for n in names})
        for n, fn in names.items():
            server.set_unary_callback(f"/t.T/{n}", fn)
        server.add_registered_method_handlers(
            "t.R", {"Raw": grpc.unary_unary_rpc_method_handler(unused, request_deserializer=bytes.upper)})
        server.set_unary_callback("/t.R/Raw", lambda request, reply, raw: reply(request + b"|" + raw),
                                  with_raw=True)
        with pytest.raises(KeyError):
            server.set_unary_callback("/t.T/Unknown", now)
        port = await server.listen("127.0.0.1", 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                def call(n):
                    return ch.unary_unary(f"/t.T/{n}")
                assert await call("Now")(b"a", timeout=5) == b"now:a"
                assert await ch.unary_unary("/t.R/Raw")(b"ab", timeout=5) == b"AB|ab"
                got = await asyncio.gather(*(call("Later")(b"%d" % i, timeout=5) for i in range(50)))
                assert got == [b"later:%d" % i for i in range(50)]
                errors = []
                for n, timeout in (("Refuse", 5), ("Broken", 5), ("TooLate", 0.2)):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call(n)(b"x", timeout=timeout)
                    errors.append((err.value.code(), err.value.details()))
                deadline = time.monotonic() + 5
                while not late:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                assert await call("Now")(b"b", timeout=5) == b"now:b"
                return errors
        finally:
            await server.stop(0)

    errors = asyncio.run(main())
    assert errors[0] == (grpc.StatusCode.FAILED_PRECONDITION, "no: x")
    assert errors[1][0] == grpc.StatusCode.INTERNAL and "bug" in errors[1][1]
    assert errors[2][0] == grpc.StatusCode.DEADLINE_EXCEEDED


def test_flush_now_sends_queued_answers_before_the_loop_turns():
    """GrpcServer.flush_now (what a member calls after applying a batch):
    the answers queued on every connection leave at once, not in the next
    turn of the loop (where reads that came meanwhile would go first)."""
    from grpclite import GrpcServer

    seen = []

    async def unused(request, context):
        raise AssertionError("the callback serves this method")

    async def main():
        server = GrpcServer()

        def answer(request, reply):
            reply(b"answer:" + request)
            queued = sum(1 for conn in server.connections if conn.out)
            server.flush_now()
            seen.append((queued, sum(1 for conn in server.connections if conn.out)))

        server.add_registered_method_handlers("t.T", {"A": grpc.unary_unary_rpc_method_handler(unused)})
        server.set_unary_callback("/t.T/A", answer)
        port = await server.listen("127.0.0.1", 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                got = await asyncio.gather(*(ch.unary_unary("/t.T/A")(b"%d" % i, timeout=5) for i in range(20)))
                assert got == [b"answer:%d" % i for i in range(20)]
        finally:
            await server.stop(0)

    asyncio.run(main())
    assert len(seen) == 20 and all(queued == 1 and left == 0 for queued, left in seen), seen


@pytest.mark.process
def test_max_concurrent_streams_flag_is_advertised(procs, tmp_path, member):
    """etcd's --max-concurrent-streams: the member advertises it in its SETTINGS
    (SETTINGS_MAX_CONCURRENT_STREAMS, id 3); the default member advertises a bound too."""

    def advertised(member) -> dict:
        with connect(member) as s:
            s.sendall(PREFACE + frame(SETTINGS, 0, 0))
            frames, _ = read_frames(s, lambda f: f[0] == SETTINGS and not f[1] & 1)
        payload = frames[-1][3]
        return dict(struct.unpack_from(">HL", payload, i) for i in range(0, len(payload), 6))

    small = procs.start_etcdlite(tmp_path, "streams3", max_concurrent_streams=3)
    assert advertised(small)[3] == 3
    assert advertised(member)[3] == DEFAULT_MAX_CONCURRENT_STREAMS < 2**31 - 1


@pytest.mark.process
def test_max_concurrent_streams_out_of_range_is_refused_at_start(tmp_path):
    p = subprocess.run([PYTHON, "-m", "etcdlite", "--data-dir", str(tmp_path / "d"),
                        "--max-concurrent-streams", "0"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "--max-concurrent-streams" in p.stderr and "Traceback" not in p.stderr
