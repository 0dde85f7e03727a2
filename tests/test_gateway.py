"""etcd's gRPC gateway (JSON over HTTP/1.1) on etcdlite's client port.

The differential test sends one sequence of HTTP requests to a real etcd 3.4
and to an etcdlite member and compares the answers: status, Content-Type and
the JSON, with what must differ between two clusters normalised (cluster,
member and lease IDs become <CLUSTER#n>, <MEMBER#n>, <LEASE#n> by first
appearance, so identity is still checked; raft terms and indexes, sizes, the
server version, the peer and client URLs, a lease's remaining TTL, tokens).
Keys, values, revisions, counts, error texts and codes are compared exactly.
The other tests run against etcdlite alone: a watch stream seeing a put made
over gRPC, a chunked body streaming watch requests, keep-alive, bounds, gRPC
served beside misbehaving clients; and, in-process, that a stream's answers
are pulled only as fast as its client reads them.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import time

import pytest

from etcdlite.pb.etcdserverpb import rpc_pb2
from etcdlite.pb.mvccpb import kv_pb2
from etcdlite.server.gateway import Gateway
from etcdlite.server.gateway_calls import GatewayContext, Route
from harness.etcd_client import Client
from harness.procs import ETCD_BIN, have_binary, run_etcdctl


MAX_REQUEST_BYTES = 64 * 1024  # both servers: keeps the oversized bodies small
GRPC_OVERHEAD = 512 * 1024


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def request(port: int, method: str, path: str, body=None, headers=None, conn=None):
    """(status, content type, body bytes) of one request; `body` a dict is sent as JSON."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        if own:
            conn.close()


# --- normalising --------------------------------------------------------------------

_ID_KINDS = {"cluster_id": "CLUSTER", "member_id": "MEMBER", "leader": "MEMBER"}
_VOLATILE = {"raft_term", "raftTerm", "raftIndex", "raftAppliedIndex", "dbSize", "dbSizeInUse", "hash",
             "peerURLs", "clientURLs", "token", "etcdserver"}


class Normaliser:
    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], str] = {}

    def placeholder(self, kind: str, value: str) -> str:
        if value in ("0", 0):
            return value
        key = (kind, str(value))
        if key not in self.ids:
            self.ids[key] = f"<{kind}#{sum(1 for k in self.ids if k[0] == kind) + 1}>"
        return self.ids[key]

    def walk(self, value, parent: str = ""):
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k in _VOLATILE:
                    out[k] = "<VOLATILE>"
                elif k in _ID_KINDS:
                    out[k] = self.placeholder(_ID_KINDS[k], v)
                elif k in ("ID", "lease"):
                    out[k] = self.placeholder("MEMBER" if parent == "members" else "LEASE", v)
                elif k == "TTL" and parent == "ttl":
                    out[k] = "<REMAINING>" if 0 < int(v) <= 60 else v
                elif k == "version" and isinstance(v, str) and v.startswith("3.4"):
                    out[k] = "<SERVER-VERSION>"
                else:
                    out[k] = self.walk(v, k if isinstance(v, list) else parent)
            return out
        if isinstance(value, list):
            return [self.walk(v, parent) for v in value]
        return value

    def answer(self, status: int, ctype: str, body: bytes, *, ttl: bool = False):
        if ctype and ctype.startswith("application/json"):
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            data = lines[0] if len(lines) == 1 else lines
            return status, "json", self.walk(data, "ttl" if ttl else "")
        return status, ctype, body.decode(errors="replace")


# --- the session --------------------------------------------------------------------


def read_stream(port: int, path: str, body: bytes, lines: int, headers=None) -> tuple[int, list]:
    """(status, the first `lines` JSON lines) of a streaming call, then the connection is closed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        got = []
        while len(got) < lines:
            line = resp.readline()
            if not line:
                break
            got.append(json.loads(line))
        return resp.status, got
    finally:
        conn.close()


def session(port: int) -> list:
    """The scripted requests against one server; the normalised transcript."""
    norm = Normaliser()
    out = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # one keep-alive connection

    def call(title, method, path, body=None, headers=None, ttl=False):
        status, ctype, data = request(port, method, path, body, headers, conn=conn)
        out.append((title, norm.answer(status, ctype, data, ttl=ttl)))
        return json.loads(data) if ctype == "application/json" and data.strip() else None

    call("version", "GET", "/version")
    call("health", "GET", "/health")
    call("put foo", "POST", "/v3/kv/put", {"key": b64("foo"), "value": b64("bar")})
    call("put foo prev_kv", "POST", "/v3/kv/put", {"key": b64("foo"), "value": b64("baz"), "prev_kv": True})
    for k in ("a1", "a2", "a3"):
        call(f"put {k}", "POST", "/v3/kv/put", {"key": b64(k), "value": b64(k.upper() + "<&>")})
    call("range foo", "POST", "/v3/kv/range", {"key": b64("foo")})
    call("range prefix sorted", "POST", "/v3/kv/range",
         {"key": b64("a"), "range_end": b64("b"), "sort_order": "DESCEND", "sort_target": "KEY", "limit": 2})
    call("range camelCase, quoted ints", "POST", "/v3/kv/range",
         {"key": b64("a"), "rangeEnd": b64("b"), "countOnly": True, "revision": "4"})
    call("range keys_only, unknown field", "POST", "/v3/kv/range", {"key": b64("a1"), "keys_only": True, "x": [1]})
    call("range v3beta", "POST", "/v3beta/kv/range", {"key": b64("foo")})
    call("txn", "POST", "/v3/kv/txn", {
        "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("baz")}],
        "success": [{"request_put": {"key": b64("foo"), "value": b64("qux")}},
                    {"requestRange": {"key": b64("foo")}}],
        "failure": [{"request_delete_range": {"key": b64("foo")}}]})
    call("txn fails", "POST", "/v3/kv/txn", {
        "compare": [{"key": b64("foo"), "target": "MOD", "result": "LESS", "mod_revision": 1}],
        "failure": [{"request_range": {"key": b64("a"), "range_end": b64("b"), "count_only": True}}]})
    call("deleterange prev_kv", "POST", "/v3/kv/deleterange", {"key": b64("a3"), "prev_kv": True})
    call("future revision", "POST", "/v3/kv/range", {"key": b64("foo"), "revision": 1000})
    call("compaction", "POST", "/v3/kv/compaction", {"revision": 3})
    call("compacted revision", "POST", "/v3/kv/range", {"key": b64("foo"), "revision": 2})
    call("compaction future", "POST", "/v3/kv/compaction", {"revision": 1000})
    # leases: an ID of our choosing, so both servers print the same
    call("lease grant", "POST", "/v3/lease/grant", {"TTL": 60, "ID": 7777})
    call("put with lease", "POST", "/v3/kv/put", {"key": b64("leased"), "value": b64("v"), "lease": "7777"})
    call("timetolive", "POST", "/v3/lease/timetolive", {"ID": 7777, "keys": True}, ttl=True)
    call("timetolive kv alias", "POST", "/v3/kv/lease/timetolive", {"ID": "7777"}, ttl=True)
    call("timetolive unknown", "POST", "/v3/lease/timetolive", {"ID": 5})
    call("leases", "POST", "/v3/lease/leases", {})
    call("leases kv alias", "POST", "/v3/kv/lease/leases", {})
    call("revoke", "POST", "/v3/kv/lease/revoke", {"ID": 7777})
    call("revoke again", "POST", "/v3/lease/revoke", {"ID": 7777})
    call("leased key gone", "POST", "/v3/kv/range", {"key": b64("leased")})
    call("member list", "POST", "/v3/cluster/member/list", {})
    call("status", "POST", "/v3/maintenance/status", {})
    call("alarm list", "POST", "/v3/maintenance/alarm", {})
    call("defragment", "POST", "/v3/maintenance/defragment", {})
    call("lease for a lock", "POST", "/v3/lease/grant", {"TTL": 60, "ID": 6666})
    call("lock", "POST", "/v3/lock/lock", {"name": b64("mutex"), "lease": 6666})
    call("unlock", "POST", "/v3/lock/unlock", {"key": b64("mutex/1a0a")})
    call("election leader, none", "POST", "/v3/election/leader", {"name": b64("vote")})
    call("OPTIONS", "OPTIONS", "/v3/kv/range")
    # refusals: JSON, types, paths, methods, sizes
    call("bad json", "POST", "/v3/kv/range", b"{bad")
    call("truncated json", "POST", "/v3/kv/range", b'{"key":"Zm9v","limit":1')
    call("missing comma", "POST", "/v3/kv/range", b'{"key":"Zm9v" "limit":1}')
    call("array body", "POST", "/v3/kv/range", b"[]")
    call("number for bytes", "POST", "/v3/kv/range", {"key": 123})
    call("bad base64", "POST", "/v3/kv/range", {"key": "!!"})
    call("fraction for int64", "POST", "/v3/kv/range", {"key": b64("foo"), "limit": 1.5})
    call("string for bool", "POST", "/v3/kv/range", {"key": b64("foo"), "serializable": "true"})
    call("unknown enum", "POST", "/v3/kv/range", {"key": b64("foo"), "sort_order": "BOGUS"})
    call("object for repeated", "POST", "/v3/kv/txn", {"compare": {}})
    call("empty body", "POST", "/v3/kv/range", b"")
    call("no key", "POST", "/v3/kv/put", {"value": b64("x")})
    call("request too large", "POST", "/v3/kv/put", {"key": b64("big"), "value": b64(b"x" * (MAX_REQUEST_BYTES + 1))})
    call("message too large", "POST", "/v3/kv/put",
         {"key": b64("big"), "value": b64(b"x" * (MAX_REQUEST_BYTES + GRPC_OVERHEAD + 10))})
    call("unknown call", "POST", "/v3/kv/nope", {})
    call("v3alpha", "POST", "/v3alpha/kv/range", {"key": b64("foo")})
    call("GET on a call", "GET", "/v3/kv/range")
    call("unknown path", "GET", "/nope")
    call("POST /version", "POST", "/version", b"")
    call("DELETE /health", "DELETE", "/health")
    # streams
    status, lines = read_stream(port, "/v3/watch", json.dumps(
        {"create_request": {"key": b64("foo"), "start_revision": 4}}).encode(), 2)
    out.append(("watch from revision 4", status, norm.walk(lines)))
    status, lines = read_stream(port, "/v3/watch", b'{"create_request":{"key":"Zm9v","start_revision":1}}', 2)
    out.append(("watch compacted", status, norm.walk(lines)))
    status, lines = read_stream(port, "/v3/watch", b"{bad", 1)
    out.append(("watch bad json", status, norm.walk(lines)))
    call("lease for keepalive", "POST", "/v3/lease/grant", {"TTL": 60, "ID": 8888})
    status, lines = read_stream(port, "/v3/lease/keepalive", b'{"ID":8888} {"ID":"9999"}', 2)
    out.append(("keepalive", status, norm.walk(lines)))
    # auth through the gateway: the token in an Authorization header
    call("user add root", "POST", "/v3/auth/user/add", {"name": "root", "password": "rootpw"})
    call("grant root", "POST", "/v3/auth/user/grant", {"user": "root", "role": "root"})
    call("user add alice", "POST", "/v3/auth/user/add", {"name": "alice", "password": "pw"})
    call("role add", "POST", "/v3/auth/role/add", {"name": "reader"})
    call("role grant", "POST", "/v3/auth/role/grant",
         {"name": "reader", "perm": {"permType": "READ", "key": b64("foo")}})
    call("grant alice", "POST", "/v3/auth/user/grant", {"user": "alice", "role": "reader"})
    call("auth enable", "POST", "/v3/auth/enable", {})
    call("range without token", "POST", "/v3/kv/range", {"key": b64("foo")})
    call("authenticate bad", "POST", "/v3/auth/authenticate", {"name": "alice", "password": "nope"})
    alice = call("authenticate alice", "POST", "/v3/auth/authenticate", {"name": "alice", "password": "pw"})
    token = {"Authorization": alice["token"]}
    call("alice reads foo", "POST", "/v3/kv/range", {"key": b64("foo")}, token)
    call("alice may not write", "POST", "/v3/kv/put", {"key": b64("foo"), "value": b64("no")}, token)
    call("alice may not read a1", "POST", "/v3/kv/range", {"key": b64("a1")}, token)
    call("alice user list", "POST", "/v3/auth/user/list", {}, token)
    call("bad token", "POST", "/v3/kv/range", {"key": b64("foo")}, {"Authorization": "garbage"})
    root = call("authenticate root", "POST", "/v3/auth/authenticate", {"name": "root", "password": "rootpw"})
    call("root user get", "POST", "/v3/auth/user/get", {"name": "alice"}, {"Authorization": root["token"]})
    call("root role get", "POST", "/v3/auth/role/get", {"role": "reader"}, {"Authorization": root["token"]})
    call("auth disable", "POST", "/v3/auth/disable", {}, {"Authorization": root["token"]})
    call("range after disable", "POST", "/v3/kv/range", {"key": b64("foo")})
    conn.close()
    return out


@pytest.mark.process
@pytest.mark.skipif(not have_binary(ETCD_BIN), reason="the real etcd 3.4 is not installed")
def test_the_gateway_answers_as_etcds(procs, tmp_path):
    flags = {"max_request_bytes": MAX_REQUEST_BYTES}
    (tmp_path / "real").mkdir()
    (tmp_path / "lite").mkdir()
    real = procs.start_real_etcd(tmp_path / "real", name="m0", **flags)
    lite = procs.start_etcdlite(tmp_path / "lite", name="m0", **flags)
    want, got = session(real.client_port), session(lite.client_port)
    assert [w[0] for w in want] == [g[0] for g in got]
    differences = [f"{w[0]}:\n  real etcd: {w[1:]}\n  etcdlite:  {g[1:]}" for w, g in zip(want, got) if w != g]
    assert not differences, "\n".join(differences)


# --- etcdlite alone -----------------------------------------------------------------


@pytest.fixture
def member(procs, tmp_path):
    return procs.start_etcdlite(tmp_path, name="lite0", max_request_bytes=MAX_REQUEST_BYTES)


@pytest.mark.process
def test_a_watch_stream_receives_a_put_made_over_grpc(member):
    port = member.client_port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v3/watch", body=json.dumps({"create_request": {"key": b64("w/"), "range_end": b64("w0")}}))
    resp = conn.getresponse()
    assert resp.status == 200
    created = json.loads(resp.readline())["result"]
    assert created["created"] is True
    with Client(member.endpoint) as client:
        put = client.put(b"w/k", b"from grpc")
        event = json.loads(resp.readline())["result"]
        assert event["events"] == [{"kv": {"key": b64("w/k"), "create_revision": str(put.header.revision),
                                           "mod_revision": str(put.header.revision), "version": "1",
                                           "value": b64("from grpc")}}]
        assert event["header"]["revision"] == str(put.header.revision)
        conn.close()
        # the closed stream's watcher is gone; gRPC goes on
        assert client.get(b"w/k").kvs[0].value == b"from grpc"


@pytest.mark.process
def test_requests_share_a_keep_alive_connection(member):
    conn = http.client.HTTPConnection("127.0.0.1", member.client_port, timeout=10)
    for i in range(3):
        status, _, body = request(0, "POST", "/v3/kv/put", {"key": b64("k"), "value": b64(str(i))}, conn=conn)
        assert status == 200
    status, _, body = request(0, "POST", "/v3/kv/range", {"key": b64("k")}, conn=conn)
    assert json.loads(body)["kvs"][0]["value"] == b64("2")
    status, _, body = request(0, "GET", "/metrics", conn=conn)
    assert status == 200 and b"etcd_server_has_leader 1" in body
    status, _, body = request(0, "POST", "/metrics", conn=conn)  # any method, as etcd's
    assert status == 200 and b"etcd_server_has_leader 1" in body
    # a bad body is answered and the connection serves on
    assert request(0, "POST", "/v3/kv/range", b"{bad", conn=conn)[0] == 400
    assert request(0, "GET", "/health", conn=conn)[:3:2] == (200, b'{"health":"true"}')
    conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.process
def test_bounds_on_heads_and_bodies(member):
    port = member.client_port
    # headers over the bound: 431, closed
    answer = raw_exchange(port, b"POST /v3/kv/range HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    # a body declared far over the bound is refused unread, with the gRPC port's error
    answer = raw_exchange(port, b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n{")
    assert answer.startswith(b"HTTP/1.1 429 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": f"grpc: received message larger than max (100000000 vs. {MAX_REQUEST_BYTES + GRPC_OVERHEAD})",
        "message": f"grpc: received message larger than max (100000000 vs. {MAX_REQUEST_BYTES + GRPC_OVERHEAD})",
        "code": 8}
    # a chunked body is bounded the same way
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40))
    answer = raw_exchange(port, b"POST /v3/kv/put HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 429 ")
    # a chunked body within it is read
    body = json.dumps({"key": b64("chunked"), "value": b64("v")}).encode()
    answer = raw_exchange(port, b"POST /v3/kv/put HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                          + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert answer.startswith(b"HTTP/1.1 200 ")
    # not HTTP at all
    assert raw_exchange(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")


@pytest.mark.process
def test_grpc_is_served_while_gateway_clients_misbehave(member):
    port = member.client_port
    socks = []
    try:
        # half a request line, a body that never comes, a watch that never reads
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /v3/kv/ra")
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /v3/kv/put HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"key\":")
        deaf = socket.create_connection(("127.0.0.1", port))
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        watch = json.dumps({"create_request": {"key": b64("big/"), "range_end": b64("big0")}}).encode()
        deaf.sendall(b"POST /v3/watch HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(watch), watch))
        socks += [slow, stalled, deaf]
        value = b"v" * 60000
        with Client(member.endpoint) as client:
            started = time.monotonic()
            for i in range(60):  # ~4.8 MB of watch answers the deaf client does not take
                client.put(b"big/%d" % i, value)
            slowest = 0.0
            for i in range(20):
                t = time.monotonic()
                assert client.get(b"big/%d" % i).kvs[0].value == value
                slowest = max(slowest, time.monotonic() - t)
            assert slowest < 1.0
            assert time.monotonic() - started < 20
        # and the gateway still serves a well-behaved client
        status, _, body = request(port, "POST", "/v3/kv/range", {"key": b64("big/"), "range_end": b64("big0"),
                                                                 "count_only": True})
        assert status == 200 and json.loads(body)["count"] == "60"
        rc, out, err = run_etcdctl(member.endpoint, "get", "big/1", "--print-value-only")
        assert rc == 0 and out.strip() == value.decode()
    finally:
        for s in socks:
            s.close()


@pytest.mark.process
def test_a_chunked_watch_body_streams_its_requests(member):
    """Requests sent one by one in a chunked body, one split across two chunks; the
    body's end ends the requests, not the watch."""
    s = socket.create_connection(("127.0.0.1", member.client_port), timeout=10)
    reader = s.makefile("rb")
    s.sendall(b"POST /v3/watch HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")

    def send(data: bytes) -> None:
        s.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def result() -> dict:
        size = int(reader.readline(), 16)
        line = reader.read(size)
        assert reader.read(2) == b"\r\n"
        return json.loads(line)["result"]

    try:
        # the answer starts once the first request is read (as grpc-gateway's)
        send(json.dumps({"create_request": {"key": b64("s1")}}).encode())
        assert reader.readline().startswith(b"HTTP/1.1 200 ")
        while reader.readline() != b"\r\n":
            pass
        assert result()["created"] is True
        second = json.dumps({"create_request": {"key": b64("s2"), "prev_kv": True}}).encode()
        send(second[:9])
        send(second[9:])
        created = result()
        assert created["watch_id"] == "1" and created["created"] is True
        send(json.dumps({"cancel_request": {"watch_id": 1}}).encode())
        assert result()["canceled"] is True
        s.sendall(b"0\r\n\r\n")  # no more requests
        with Client(member.endpoint) as client:
            client.put(b"s2", b"cancelled: not seen")
            put = client.put(b"s1", b"seen")
        event = result()
        assert "watch_id" not in event and event["events"][0]["kv"]["value"] == b64("seen")
        assert event["header"]["revision"] == str(put.header.revision)
    finally:
        s.close()


def test_a_stream_takes_answers_only_as_its_client_reads():
    """The gateway pulls a stream's answers only as the client takes them, so a client
    that does not read leaves the backlog to the servicer's own bounds (a watch
    stream's queue); its going away ends the stream."""
    value = b"x" * 100_000
    pulled = 0

    async def scenario():
        nonlocal pulled
        ended = asyncio.Event()

        async def answers():
            nonlocal pulled
            try:
                while True:
                    pulled += 1
                    yield rpc_pb2.WatchResponse(events=[kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k", value=value))])
            finally:
                ended.set()

        gateway = Gateway.__new__(Gateway)  # _stream needs none of a member's parts
        method = rpc_pb2.DESCRIPTOR.services_by_name["Watch"].methods_by_name["Watch"]
        route = Route(None, method)

        async def serve(reader, writer):
            try:
                await gateway._stream(route, answers(), GatewayContext((), ""), reader, writer, True, None)
            except OSError:
                pass

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.connect(("127.0.0.1", port))
        for _ in range(100):  # until the socket buffers are full and the pulling stops
            before = pulled
            await asyncio.sleep(0.02)
            if pulled == before and pulled > 0:
                break
        stalled = pulled
        await asyncio.sleep(0.3)
        assert pulled == stalled, "answers were pulled while nobody read them"
        assert stalled * len(value) < 16 << 20  # socket buffers and one transport's high-water mark
        client.close()
        await asyncio.wait_for(ended.wait(), 5)  # the client's going closed the stream
        server.close()

    asyncio.run(scenario())
