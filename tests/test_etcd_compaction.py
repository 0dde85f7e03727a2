"""The apiserver compacts etcd's history (`--etcd-compaction-interval`), as
kube-apiserver: turns agreed through `compact_rev_key`, each compacting to
what the previous turn saw.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from apiserver.compactor import COMPACT_REV_KEY, Compactor
from apiserver.etcd3 import Etcd
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from harness.etcd_client import wait_until
from harness.plane import start_apiserver
from harness.procs import Registry

pytestmark = pytest.mark.process


def _compacted(kv, revision: int) -> bool:
    try:
        kv.Range(pb.RangeRequest(key=b"k", revision=revision))
        return False
    except grpc.RpcError as e:
        return e.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in e.details()


def test_two_compactors_take_turns(procs, tmp_path):
    member = procs.start_etcdlite(tmp_path, name="etcd")
    with grpc.insecure_channel(member.endpoint) as ch:
        kv = rpc.KVStub(ch)

        async def run():
            etcd = Etcd(member.url)
            try:
                one, two = Compactor(etcd), Compactor(etcd)
                assert await one.turn() is None  # the first turn: nothing to drop yet
                assert await two.turn() is None and two.turns == 1  # lost the Txn: adopts the count
                seen = one.revision
                for i in range(5):
                    kv.Put(pb.PutRequest(key=b"k", value=str(i).encode()))
                assert await one.turn() == seen  # compacts to what its last turn saw
                assert _compacted(kv, seen - 1) and not _compacted(kv, seen)
                assert await two.turn() is None and two.turns == 2  # one's turn this time: adopted
                two_saw = two.revision
                kv.Put(pb.PutRequest(key=b"k", value=b"last"))
                # two takes the next turn and compacts to what it saw when it lost the last one
                assert await two.turn() == two_saw
                assert await one.turn() is None and one.turns == 3
            finally:
                await etcd.close()
        asyncio.run(run())
        stored = kv.Range(pb.RangeRequest(key=COMPACT_REV_KEY)).kvs[0]
        assert stored.version == 3


def test_the_apiserver_compacts_on_its_interval(tmp_path):
    reg = Registry()
    try:
        member = reg.start_etcdlite(tmp_path, name="etcd")
        start_apiserver(tmp_path, member.url, registry=reg, etcd_compaction_interval="500ms")
        with grpc.insecure_channel(member.endpoint) as ch:
            kv = rpc.KVStub(ch)
            first = kv.Put(pb.PutRequest(key=b"k", value=b"1")).header.revision

            def turns():
                got = kv.Range(pb.RangeRequest(key=COMPACT_REV_KEY)).kvs
                return got[0].version if got else 0
            wait_until(lambda: turns() >= 3, timeout=20, what="three compaction turns")
            wait_until(lambda: _compacted(kv, first), timeout=20, what="the history before the turns compacted")
    finally:
        reg.cleanup()
