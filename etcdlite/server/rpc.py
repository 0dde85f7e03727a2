"""What every gRPC handler shares: etcd errors become gRPC statuses, and no
Python traceback ever reaches a client; handlers may answer with a response
already serialized (bytes) where that is cheaper (a plain Put, watch events)."""

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


def serialize(message) -> bytes:
    """A response serializer that lets bytes through as they are."""
    return message if type(message) is bytes else message.SerializeToString()


class _Captured:
    """Stands in for a server to catch what a generated add_*_to_server registers."""

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Ignored: add_servicer registers the same handlers itself."""

    def add_registered_method_handlers(self, service_name: str, method_handlers) -> None:
        self.service_name, self.method_handlers = service_name, method_handlers


def add_servicer(add_to_server, servicer, server) -> None:
    """As the generated `add_to_server(servicer, server)`, except that every
    response may also be given already serialized (bytes)."""
    captured = _Captured()
    add_to_server(servicer, captured)
    name = captured.service_name
    handlers = {method: h._replace(response_serializer=serialize)
                for method, h in captured.method_handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
