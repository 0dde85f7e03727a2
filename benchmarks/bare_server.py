"""The "bare gRPC ceiling": a server that implements etcdserverpb.KV/Put by storing
the value in a dict, with the same generated stubs as etcdlite (etcdlite.pb).

No MVCC, no Raft, no watch, no persistence: what is left is the cost of gRPC in
Python. The put benchmarks run the same load against it as against etcdlite, and so
does `etcdctl check perf`: Range answers with the revision and no keys (the check's
opening Get must find none), DeleteRange drops the range's keys (its closing delete).
The other calls are not implemented (UNIMPLEMENTED).

--sync FILE makes it durable as etcdlite is and nothing more: each Put's value
is appended to FILE, and the Puts of one turn of the loop are answered after
one fdatasync covering them all (group commit, the sync inline in the loop as
etcdlite's default). It is the ceiling of a server that syncs before it
answers: what etcdlite could reach if its store, Raft and journal cost nothing.

--server h2 (default) serves it with grpclite, the gRPC server etcdlite
runs on; --server grpcio with grpc.aio's, with etcdlite's former options.

    python -m benchmarks.bare_server --port 23790 [--server grpcio] [--sync FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import grpc

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from grpclite import GrpcServer
from etcdlite.server.member import GRPCIO_SERVER_OPTIONS


class BareKV(rpc.KVServicer):
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.revision = 1

    async def Put(self, request, context):
        self.data[request.key] = request.value
        self.revision += 1
        return pb.PutResponse(header=pb.ResponseHeader(revision=self.revision))

    async def Range(self, request, context):
        return pb.RangeResponse(header=pb.ResponseHeader(revision=self.revision))

    async def DeleteRange(self, request, context):
        start, end = request.key, request.range_end
        for key in [k for k in self.data if start <= k < end] if end else [start]:
            self.data.pop(key, None)
        self.revision += 1
        return pb.DeleteRangeResponse(header=pb.ResponseHeader(revision=self.revision))


class SyncedKV(BareKV):
    """BareKV whose Puts are answered once their values are on disk (group commit)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.loop = asyncio.get_running_loop()
        self.batch: list[tuple[bytes, asyncio.Future]] = []

    def _commit(self) -> None:
        batch, self.batch = self.batch, []
        os.write(self.fd, b"".join(value for value, _ in batch))
        os.fdatasync(self.fd)
        for _, done in batch:
            done.set_result(None)

    async def Put(self, request, context):
        self.data[request.key] = request.value
        self.revision += 1
        revision = self.revision
        done = self.loop.create_future()
        if not self.batch:
            self.loop.call_soon(self._commit)
        self.batch.append((request.value, done))
        await done
        return pb.PutResponse(header=pb.ResponseHeader(revision=revision))


async def serve(port: int, kind: str, sync: str | None = None) -> None:
    kv = SyncedKV(sync) if sync else BareKV()
    if kind == "grpcio":
        server = grpc.aio.server(options=GRPCIO_SERVER_OPTIONS)
        rpc.add_KVServicer_to_server(kv, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        server = GrpcServer()
        rpc.add_KVServicer_to_server(kv, server)
        await server.listen("127.0.0.1", port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--server", choices=["h2", "grpcio"], default="h2")
    ap.add_argument("--sync", metavar="FILE", help="append each Put's value to FILE and answer after "
                                                   "a group-committed fdatasync")
    args = ap.parse_args()
    asyncio.run(serve(args.port, args.server, args.sync))


if __name__ == "__main__":
    main()
