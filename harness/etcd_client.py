"""gRPC stubs for one endpoint, for tests that talk to a member directly."""

from __future__ import annotations

import time

import grpc

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc


class Client:
    def __init__(self, endpoint: str, options=()):
        self.channel = grpc.insecure_channel(endpoint, options=options)
        self.kv = rpc.KVStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.cluster = rpc.ClusterStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)

    def put(self, key: bytes, value: bytes, **kw) -> pb.PutResponse:
        return self.kv.Put(pb.PutRequest(key=key, value=value, **kw), timeout=10)

    def get(self, key: bytes, **kw) -> pb.RangeResponse:
        return self.kv.Range(pb.RangeRequest(key=key, **kw), timeout=10)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def error_of(call) -> tuple[grpc.StatusCode, str]:
    """(code, details) of the gRPC error `call()` raises; fails if it succeeds."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details()
    raise AssertionError("the call succeeded; an error was expected")


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def leader_of(members, timeout: float = 20):
    """The member (of harness.procs' Members) that reports itself leader, once one does."""

    def find():
        for m in members:
            if not m.alive:
                continue
            try:
                with Client(m.endpoint) as c:
                    st = c.maintenance.Status(pb.StatusRequest(), timeout=2)
            except grpc.RpcError:
                continue
            if st.leader and st.leader == st.header.member_id:
                return m
        return None

    return wait_until(find, timeout, what="a leader")
