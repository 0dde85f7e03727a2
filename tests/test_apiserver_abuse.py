"""The apiserver against a client that abuses it: what one client sends or
leaves behind stays bounded and is answered as kube-apiserver answers.

A merge patch too deep or too large is a BadRequest or RequestEntityTooLarge
(never InternalError RecursionError); watches that are cancelled or whose
connection closes leave no watcher behind; watches from "now" share one
initial list; a watch that never reads ends with Expired once it has fallen
behind, while other clients are served within a second. The process tests run
the apiserver in this process (its own event loop thread) against an etcdlite
member, so the watch cache can be inspected.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time

import pytest

from apiserver import manifest, validation
from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.etcd3 import Etcd
from apiserver.limits import MAX_JSON_DEPTH, MAX_REQUEST_BYTES, MAX_SELECTOR_LENGTH
from apiserver.pb import api_pb2, core_pb2
from apiserver.registry import Registry
from apiserver.resources import BY_NAME, RESOURCES
from apiserver.selectors import make_predicate
from apiserver.server import MAX_RECEIVE_BYTES
from apiserver.service import ApiServerService, add_to_server
from apiserver.storage import Storage, decode_continue
from apiserver.watch_cache import WatchCache
from grpclite import GrpcServer
from grpclite.wire import (
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    MESSAGE_PREFIX,
    PREFACE,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    hpack_int,
    hpack_str,
    literal,
)
from harness.etcd_client import wait_until
from harness.procs import Registry as Processes

# the watch cache's ring, and so what a watcher may hold unread (its buffer)
CACHE_SIZE = 20
BIG_VALUE = "x" * (64 * 1024)


def deep_patch(levels: int) -> str:
    return '{"metadata":{"annotations":' + '{"a":' * levels + "1" + "}" * levels + "}}"


# ---- pure: client-supplied JSON never recurses past its bound -----------------------------


def test_a_patch_nested_past_the_limit_is_a_bad_request_at_any_depth():
    cm = core_pb2.ConfigMap(metadata={"name": "c", "namespace": "default"})
    for levels in (MAX_JSON_DEPTH, 900, 5000, 100_000):
        with pytest.raises(ApiError) as e:
            manifest.apply_merge_patch(cm, deep_patch(levels))
        assert e.value.reason == "BadRequest"
        assert "exceeded max depth" in e.value.message
    array = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ApiError, match="exceeded max depth"):
        manifest.apply_merge_patch(cm, '{"data":' + array + "}")


def test_nesting_is_measured_level_by_level():
    assert not manifest.nests_deeper_than({"a": [{"b": 1}]}, 3)
    assert manifest.nests_deeper_than({"a": [{"b": {}}]}, 3)
    assert not manifest.nests_deeper_than("text", 0)
    assert not manifest.nests_deeper_than(json.loads('{"a":' * 500 + "1" + "}" * 500), 500)
    assert manifest.nests_deeper_than(json.loads('{"a":' * 500 + "{}" + "}" * 500), 500)


def test_a_patch_over_the_request_limit_is_request_entity_too_large():
    cm = core_pb2.ConfigMap(metadata={"name": "c", "namespace": "default"})
    big = json.dumps({"data": {"v": "x" * MAX_REQUEST_BYTES}})
    with pytest.raises(ApiError) as e:
        manifest.apply_merge_patch(cm, big)
    assert (e.value.reason, e.value.http_code) == ("RequestEntityTooLarge", 413)
    assert e.value.message == "Request entity too large: limit is 3145728"


def test_a_deeply_nested_continue_token_is_a_bad_request():
    token = base64.urlsafe_b64encode(("[" * 100_000 + "]" * 100_000).encode()).decode()
    with pytest.raises(ApiError) as e:
        decode_continue(token, b"/registry/pods/")
    assert e.value.reason == "BadRequest"


def test_a_deeply_nested_docker_config_is_invalid_not_an_internal_error():
    secret = core_pb2.Secret(metadata={"name": "s", "namespace": "default"},
                             type="kubernetes.io/dockerconfigjson")
    secret.data[".dockerconfigjson"] = ("[" * 100_000 + "]" * 100_000).encode()
    with pytest.raises(ApiError) as e:
        validation.validate_create(BY_NAME["secrets"], secret)
    assert e.value.reason == "Invalid"
    assert "exceeded max depth" in e.value.message


def test_a_selector_over_the_limit_is_refused_before_it_is_parsed():
    pods = BY_NAME["pods"]
    at_limit = ",".join(["a"] * (MAX_SELECTOR_LENGTH // 2))
    assert not make_predicate(pods, at_limit).everything
    over = at_limit + ",b"
    for label, field in ((over, ""), ("", ",".join(["metadata.name=x"] * (MAX_SELECTOR_LENGTH // 15 + 1)))):
        start = time.monotonic()
        with pytest.raises(ApiError) as e:
            make_predicate(pods, label, field)
        assert e.value.reason == "BadRequest"
        assert "selector too long" in e.value.message
        assert time.monotonic() - start < 0.05


# ---- an apiserver in this process ---------------------------------------------------------


class InProcessApiServer:
    """The apiserver's parts as `apiserver.server.serve` wires them, on an event
    loop of their own in a thread, so a test can look at the watch caches."""

    def __init__(self, etcd_url: str, cache_size: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self._start(etcd_url, cache_size))

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, etcd_url: str, cache_size: int) -> None:
        self.etcd = Etcd(etcd_url)
        storage = Storage(self.etcd)
        self.caches = {res.name: WatchCache(self.etcd, res, storage.decode, capacity=cache_size)
                       for res in RESOURCES}
        await asyncio.gather(*(cache.start() for cache in self.caches.values()))
        registry = Registry(storage, self.caches)
        await registry.ensure_system_namespaces()
        self.server = GrpcServer(max_receive_message_length=MAX_RECEIVE_BYTES, eager_unary=False)
        add_to_server(ApiServerService(registry), self.server)
        self.port = await self.server.listen("127.0.0.1", 0)
        await self.server.start()

    async def _stop(self) -> None:
        await self.server.stop(grace=0.5)
        await asyncio.gather(*(cache.stop() for cache in self.caches.values()), return_exceptions=True)
        await self.etcd.close()

    def watchers(self, resource: str) -> int:
        return self.caches[resource].watcher_count

    def open_streams(self) -> list:
        return [s for conn in self.server.connections for s in conn.streams.values()]

    def close(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    procs = Processes()
    try:
        member = procs.start_etcdlite(tmp_path_factory.mktemp("apiabuse"), name="etcd")
        server = InProcessApiServer(member.url, CACHE_SIZE)
        try:
            yield server
        finally:
            server.close()
    finally:
        procs.cleanup()


@pytest.fixture
def client(api):
    c = Client(f"127.0.0.1:{api.port}", timeout=10)
    yield c
    c.close()


def namespace(client: Client, name: str) -> str:
    client.create(core_pb2.Namespace(metadata={"name": name}))
    return name


def configmap(ns: str, name: str, value: str = "") -> core_pb2.ConfigMap:
    cm = core_pb2.ConfigMap(metadata={"name": name, "namespace": ns})
    if value:
        cm.data["v"] = value
    return cm


@pytest.mark.process
def test_a_too_deep_or_too_large_patch_gets_kubernetes_answer_and_the_server_serves_on(api, client):
    ns = namespace(client, "patches")
    client.create(configmap(ns, "c"))
    for levels in (200, 100_000):
        with pytest.raises(ApiError) as e:
            client.patch("configmaps", "c", deep_patch(levels), namespace=ns)
        assert e.value.reason == "BadRequest", e.value
        assert "exceeded max depth" in e.value.message
    with pytest.raises(ApiError) as e:
        client.patch("configmaps", "c", {"data": {"v": "x" * MAX_REQUEST_BYTES}}, namespace=ns)
    assert e.value.reason == "RequestEntityTooLarge"
    assert e.value.message == "Request entity too large: limit is 3145728"
    patched = client.patch("configmaps", "c", {"data": {"v": "ok"}}, namespace=ns)
    assert patched.data["v"] == "ok"
    # a body over kube-apiserver's limit, under the gRPC message limit, gets its answer too
    body = configmap(ns, "huge", "x" * (MAX_REQUEST_BYTES + 1024))
    for call in (client.create, client.update):
        with pytest.raises(ApiError) as e:
            call(body)
        assert e.value.message == "Request entity too large: limit is 3145728"


@pytest.mark.process
def test_cancelled_and_disconnected_watches_leave_no_watcher_and_share_one_initial_list(api, client):
    ns = namespace(client, "abandoned")
    for i in range(200):
        client.create(configmap(ns, f"c{i:03}", "v" * 100))
    baseline = api.watchers("configmaps")
    cancelled, gone = Client(f"127.0.0.1:{api.port}"), Client(f"127.0.0.1:{api.port}")
    try:
        watches = [c.watch("configmaps", ns) for c in (cancelled, gone) for _ in range(20)]
        for w in watches:
            assert next(iter(w)).type == "ADDED"
        assert api.watchers("configmaps") == baseline + 40
        for w in watches[:20]:
            w.stop()
        wait_until(lambda: api.watchers("configmaps") == baseline + 20, timeout=2,
                   what="cancelled watches released")
        gone.close()  # the connection closes under its 20 watches
        wait_until(lambda: api.watchers("configmaps") == baseline, timeout=2,
                   what="watches of a closed connection released")
    finally:
        cancelled.close()
        gone.close()


@pytest.mark.process
def test_watches_from_now_share_one_initial_list(api, client):
    ns = namespace(client, "shared")
    for i in range(50):
        client.create(configmap(ns, f"c{i:02}"))

    async def two_watches():
        cache = api.caches["configmaps"]
        first, second = cache.watch(namespace=ns), cache.watch(namespace=ns)
        try:
            return first._backlog is second._backlog, len(first._backlog) == len(cache._objects)
        finally:
            await first.aclose()
            await second.aclose()

    # every watch from "now" at one cache state replays the same list, not a copy of it
    assert api.run(two_watches()) == (True, True)


class NonReadingWatch:
    """A raw HTTP/2 client that opens one Watch with a receive window of 0 and
    never reads, until told to."""

    def __init__(self, port: int, request: api_pb2.WatchRequest) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        block = (b"\x83\x86" + hpack_int(4, 4) + hpack_str(b"/apiserver.v1.ApiServer/Watch")
                 + hpack_int(1, 4) + hpack_str(b"127.0.0.1") + hpack_int(31, 4)
                 + hpack_str(b"application/grpc") + literal(b"te", b"trailers"))
        body = request.SerializeToString()
        settings = b"\x00\x04" + U32.pack(0)  # SETTINGS_INITIAL_WINDOW_SIZE = 0
        self.sock.sendall(PREFACE + self.frame(SETTINGS, 0, 0, settings)
                          + self.frame(HEADERS, END_HEADERS, 1, block)
                          + self.frame(DATA, END_STREAM, 1, MESSAGE_PREFIX.pack(0, len(body)) + body))

    @staticmethod
    def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
        n = len(payload)
        return FRAME_HEADER.pack(n >> 8, n & 0xFF, ftype, flags, sid) + payload

    def read_to_the_end(self, timeout: float = 10.0) -> bytes | None:
        """Opens both windows, reads until the call's trailers: their header
        block, or None if the server closed the connection instead."""
        self.sock.sendall(self.frame(WINDOW_UPDATE, 0, 0, U32.pack(1 << 30))
                          + self.frame(WINDOW_UPDATE, 0, 1, U32.pack(1 << 30)))
        buf, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            while len(buf) >= 9:
                hi, lo, ftype, flags, sid = FRAME_HEADER.unpack(buf[:9])
                n = (hi << 8) | lo
                if len(buf) < 9 + n:
                    break
                payload, buf = buf[9:9 + n], buf[9 + n:]
                if ftype == GOAWAY:
                    return None
                if ftype == HEADERS and sid == 1 and flags & END_STREAM:
                    return payload
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            buf += chunk
        raise AssertionError("no trailers within the timeout")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.process
def test_a_watch_that_never_reads_ends_with_expired_and_others_are_served(api, client):
    ns = namespace(client, "stalled")
    client.create(configmap(ns, "big", BIG_VALUE))
    baseline = api.watchers("configmaps")
    attacker = NonReadingWatch(api.port, api_pb2.WatchRequest(resource="configmaps", namespace=ns))
    try:
        wait_until(lambda: api.watchers("configmaps") == baseline + 1, timeout=5, what="the watch started")
        slowest = 0.0
        # past the stream's share of unsent data, then past what a watcher may hold unread
        for i in range(1024 * 1024 // len(BIG_VALUE) + CACHE_SIZE + 5):
            client.patch("configmaps", "big", {"data": {"v": f"{i}{BIG_VALUE}"}}, namespace=ns)
            start = time.monotonic()
            client.get("configmaps", "big", namespace=ns)
            slowest = max(slowest, time.monotonic() - start)
            if api.watchers("configmaps") == baseline:
                break
        assert slowest < 1.0
        wait_until(lambda: api.watchers("configmaps") == baseline, timeout=5,
                   what="the watcher that fell behind released")
        # the call itself is over, though its client still reads nothing
        wait_until(lambda: all(s.finished for s in api.open_streams()), timeout=5,
                   what="the stalled call ended")
        trailers = attacker.read_to_the_end()
        if trailers is not None:  # else the server closed the connection: also an end
            assert literal(b"grpc-status", b"11") in trailers  # OUT_OF_RANGE: Expired
            assert b"fell too far behind" in trailers
        start = time.monotonic()
        client.get("configmaps", "big", namespace=ns)
        assert time.monotonic() - start < 1.0
    finally:
        attacker.close()
