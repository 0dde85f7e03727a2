"""The benchmarks' lean gRPC client (benchmarks/h2client.py) against a real
etcdlite member and the real etcd: the figures it produces are only worth
something if its calls do what grpc's do."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks import h2client
from etcd_stubs import Client
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb


@pytest.fixture(params=["etcdlite", "etcd"])
def endpoint(request, procs, tmp_path):
    if request.param == "etcd":
        import procs as p

        if not p.have_binary(p.ETCD_BIN):
            pytest.skip("no real etcd installed")
        return procs.start_real_etcd(tmp_path, name="etcd0").endpoint
    return procs.start_etcdlite(tmp_path, name="lite0").endpoint


def run(coro):
    return asyncio.run(coro)


def test_unary_calls_and_errors(endpoint):
    async def main():
        ch = await h2client.H2Channel.connect(endpoint)
        try:
            kv, lease = h2client.KVStub(ch), h2client.LeaseStub(ch)
            put = await kv.Put(pb.PutRequest(key=b"h2c/a", value=b"1"))
            got = await kv.Range(pb.RangeRequest(key=b"h2c/a"))
            txn = await kv.Txn(pb.TxnRequest(
                compare=[pb.Compare(key=b"h2c/a", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"1")],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=b"h2c/a", value=b"2"))]))
            grant = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60))
            with pytest.raises(h2client.CallError) as err:
                await kv.Range(pb.RangeRequest(key=b"h2c/a", revision=put.header.revision + 1000))
            # the connection goes on after an error
            after = await kv.Range(pb.RangeRequest(key=b"h2c/a"))
            return put, got, txn, grant, err.value, after
        finally:
            ch.close()

    put, got, txn, grant, err, after = run(main())
    assert got.kvs[0].value == b"1" and got.kvs[0].mod_revision == put.header.revision
    assert txn.succeeded
    assert grant.ID > 0 and grant.TTL == 60
    assert err.status == 11 and "future revision" in str(err)  # OUT_OF_RANGE, etcd's text
    assert after.kvs[0].value == b"2"
    with Client(endpoint) as c:  # what grpc itself reads back
        assert c.get(b"h2c/a").kvs[0].value == b"2"


def test_many_concurrent_calls_and_a_large_response(endpoint):
    async def main():
        ch = await h2client.H2Channel.connect(endpoint)
        try:
            kv = h2client.KVStub(ch)
            value = b"v" * 4096
            await asyncio.gather(*(kv.Put(pb.PutRequest(key=b"h2c/many/%04d" % i, value=value))
                                   for i in range(600)))
            # 2.4 MB in one response: more than the HTTP/2 default windows
            return await kv.Range(pb.RangeRequest(key=b"h2c/many/", range_end=b"h2c/many0"))
        finally:
            ch.close()

    r = run(main())
    assert r.count == 600 and len(r.kvs) == 600
    assert all(kv.value == b"v" * 4096 for kv in r.kvs)
