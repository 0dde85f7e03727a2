"""The KV service: Range, Put, DeleteRange, Txn, Compact.

With auth (etcdlite.server.auth), a Range is checked here after its read
barrier; writes carry their sender into Raft and are checked where applied.

The writes exist twice, as the same steps: coroutine methods (what grpc.aio's
server runs, --experimental-grpc-server=grpcio) and callback handlers (what
etcdlite's own server runs: no coroutine, task or future per call, which
cost a member CPU on every put; measured: benchmarks/why.md).
"""

from __future__ import annotations

import asyncio

from etcdlite.apply import Op, StateMachine
from etcdlite.errors import NO_SPACE, EtcdError
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.quota import txn_cost
from etcdlite.server.backend import Backend
from etcdlite.server.checks import check_delete, check_put, check_range, check_txn
from etcdlite.server.rpc import internal_error, unary
from grpclite import GrpcServer, add_servicer


def add_to_server(service: KVService, server) -> None:
    """The KV service; a plain Put answers with its response's bytes. On
    etcdlite's own server the writes run as callback handlers."""
    add_servicer(rpc_pb2_grpc.add_KVServicer_to_server, service, server)
    if isinstance(server, GrpcServer):
        for method, handler in service.write_callbacks().items():
            server.set_unary_callback(f"/etcdserverpb.KV/{method}", handler, with_raw=True)


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, member: Backend):
        self.m = member

    @unary
    async def Range(self, request, context):
        check_range(request)
        m = self.m
        await m.read_barrier(request.serializable)
        if m.auth.needed(context):
            await m.auth.check_read(context, request.key, request.range_end)
        resp = m.read(StateMachine.range, request)
        m.header(resp.header)
        return resp

    # --- writes: what is checked before Raft, and the response after it ------

    def _checked(self, op: Op, request) -> None:
        if op == Op.PUT:
            check_put(request)
        elif op == Op.DELETE_RANGE:
            check_delete(request)
        elif op == Op.TXN:
            check_txn(request, self.m.cfg.max_txn_ops)

    def _admitted(self, op: Op, request) -> bool:
        """The space quota (etcdlite.server.space_quota), checked first, as etcd's."""
        if op == Op.PUT:
            return self.m.space.put_admitted(request.key, request.value)
        if op == Op.TXN:
            return self.m.space.admits(txn_cost(request))
        return True

    def _response(self, resp):
        if type(resp) is int:  # a plain put's revision: the response is its header
            return self.m.header_field(resp)
        self.m.header(resp.header)
        return resp

    async def _write(self, op: Op, request, context):
        if not self._admitted(op, request):
            await self.m.space.refuse()
        self._checked(op, request)
        tail = await self.m.auth.sender(context)
        return self._response(await self.m.propose(op, request, tail))

    @unary
    async def Put(self, request, context):
        return await self._write(Op.PUT, request, context)

    @unary
    async def DeleteRange(self, request, context):
        return await self._write(Op.DELETE_RANGE, request, context)

    @unary
    async def Txn(self, request, context):
        return await self._write(Op.TXN, request, context)

    @unary
    async def Compact(self, request, context):
        return await self._write(Op.COMPACT, request, context)

    # --- the same writes as callback handlers (GrpcServer.set_unary_callback) --

    def write_callbacks(self) -> dict:
        ops = {"Put": Op.PUT, "DeleteRange": Op.DELETE_RANGE, "Txn": Op.TXN, "Compact": Op.COMPACT}
        return {method: self._write_now(method, op) for method, op in ops.items()}

    def _write_now(self, method: str, op: Op):
        # answers come from the settling of their batch (GroupCommit), which checked the header
        header_field = self.m.batch_header_field
        submit, submit_put_value = self.m.submit, self.m.submit_put_value
        checked, response = self._checked, self._response
        is_put = op == Op.PUT
        space = self.m.space
        put_admitted, admitted = space.put_admitted, self._admitted

        def refuse(reply) -> None:
            space.raise_alarm(lambda: reply(None, NO_SPACE.code, NO_SPACE.message))
        auth = self.m.auth
        needed_by_reply = auth.needed_by_reply
        identifying: set[asyncio.Task] = set()  # writes waiting to learn their sender

        async def submit_with_sender(request, raw: bytes, done, reply) -> None:
            # auth enabled or a token sent: who it is may take a read barrier
            try:
                submit(op, request, done, raw, await auth.sender(reply))
            except EtcdError as err:
                done(None, err)

        def identify_then_submit(request, raw: bytes, done, reply) -> None:
            task = asyncio.get_running_loop().create_task(submit_with_sender(request, raw, done, reply))
            identifying.add(task)
            task.add_done_callback(identifying.discard)

        def handler(request, reply, raw: bytes) -> None:
            def done(resp, error) -> None:
                if error is None:
                    # a plain put's revision: the response is its header (as _response)
                    reply(header_field(resp) if type(resp) is int else response(resp))
                elif isinstance(error, EtcdError):
                    reply(None, error.code, error.message)
                else:
                    reply(None, *internal_error(method, error))

            try:
                if not (put_admitted(request.key, request.value) if is_put else admitted(op, request)):
                    refuse(reply)
                    return
                checked(op, request)
                if needed_by_reply(reply):
                    identify_then_submit(request, raw, done, reply)
                elif is_put and not (request.lease or request.prev_kv or request.ignore_value
                                   or request.ignore_lease):
                    submit_put_value(request.key, request.value, done, len(raw))
                else:
                    submit(op, request, done, raw)
            except EtcdError as err:
                reply(None, err.code, err.message)

        return handler
