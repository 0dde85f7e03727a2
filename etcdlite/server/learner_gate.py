"""What a learner member serves its clients: as etcd 3.4, Status and a
serializable Range, nothing else (every other call, streams included, gets
`etcdserver: rpc not supported for learner`, UNAVAILABLE; clients such as
etcdctl then try another endpoint). A learner has no say in what is
committed, and a linearizable read would have to ask the leader.

`refusal` is grpclite's `GrpcServer.refuse` while the member is a learner
(Member sets and clears it as the member table changes); `LearnerInterceptor`
does the same for grpc.aio's server (--experimental-grpc-server=grpcio), and
the JSON gateway asks it too (as etcd's, whose calls go through its gRPC port).
"""

from __future__ import annotations

import grpc

from etcdlite import errors

STATUS = "/etcdserverpb.Maintenance/Status"
RANGE = "/etcdserverpb.KV/Range"


def refusal(path: str, request) -> tuple[grpc.StatusCode, str] | None:
    """(code, details) refusing the call at `path` on a learner; None to
    serve it. `request` is None for a call whose client streams."""
    if path == STATUS or (path == RANGE and request is not None and request.serializable):
        return None
    return errors.NOT_SUPPORTED_FOR_LEARNER.code, errors.NOT_SUPPORTED_FOR_LEARNER.message


class LearnerInterceptor(grpc.aio.ServerInterceptor):
    """`refusal` for grpc.aio's server, while `is_learner()`."""

    def __init__(self, is_learner):
        self._is_learner = is_learner

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not self._is_learner():
            return handler
        path = details.method
        if handler.unary_unary is not None:
            serve = handler.unary_unary

            async def unary_unary(request, context):
                refused = refusal(path, request) if self._is_learner() else None
                if refused is not None:
                    await context.abort(*refused)
                return await serve(request, context)

            return handler._replace(unary_unary=unary_unary)
        code, message = refusal(path, None)

        async def refuse(request, context):
            await context.abort(code, message)

        kind = ("stream_stream" if handler.request_streaming else "unary_stream") \
            if handler.response_streaming else "stream_unary"
        return handler._replace(**{kind: refuse})
