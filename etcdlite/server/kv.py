"""The KV service: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

from etcdlite.apply import Op
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.server.checks import check_delete, check_put, check_range, check_txn
from etcdlite.server.rpc import add_servicer, unary


def add_to_server(service: KVService, server) -> None:
    """The KV service; a plain Put answers with its response's bytes."""
    add_servicer(rpc_pb2_grpc.add_KVServicer_to_server, service, server)


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, member):
        self.m = member

    @unary
    async def Range(self, request, context):
        check_range(request)
        m = self.m
        await m.read_barrier(request.serializable)
        with m.raft.lock:
            resp = m.raft.machine.range(request)
        m.header(resp.header)
        return resp

    async def _write(self, op, request):
        resp = await self.m.propose(op, request)
        self.m.header(resp.header)
        return resp

    @unary
    async def Put(self, request, context):
        check_put(request)
        resp = await self.m.propose(Op.PUT, request)
        if type(resp) is int:  # a plain put's revision: the response is its header
            return self.m.header_field(resp)
        self.m.header(resp.header)
        return resp

    @unary
    async def DeleteRange(self, request, context):
        check_delete(request)
        return await self._write(Op.DELETE_RANGE, request)

    @unary
    async def Txn(self, request, context):
        check_txn(request, self.m.cfg.max_txn_ops)
        return await self._write(Op.TXN, request)

    @unary
    async def Compact(self, request, context):
        return await self._write(Op.COMPACT, request)
