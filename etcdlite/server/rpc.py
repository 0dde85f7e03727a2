"""What every gRPC handler shares: etcd errors become gRPC statuses, and no
Python traceback ever reaches a client."""

from __future__ import annotations

import functools
import logging

import grpc

from etcdlite.errors import EtcdError

log = logging.getLogger("etcdlite.rpc")


def unary(fn):
    @functools.wraps(fn)
    async def handler(self, request, context):
        try:
            return await fn(self, request, context)
        except EtcdError as err:
            await context.abort(err.code, err.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # a bug: keep serving, tell the client
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"etcdlite: internal error: {exc!r}")

    return handler
