"""What every etcd gRPC handler shares: etcd errors become gRPC statuses, and no
Python traceback ever reaches a client. (Answering with a response already
serialized, where that is cheaper, is grpclite's add_servicer.)"""

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
            await context.abort(*internal_error(fn.__name__, exc))

    return handler


def internal_error(name: str, exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """A bug in a handler: logged here, (code, details) for the client."""
    log.error("%s failed", name, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"etcdlite: internal error: {exc!r}"
