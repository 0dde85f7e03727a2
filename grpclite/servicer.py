"""Registering a grpcio servicer so that its responses may also be given already serialized (bytes).

A handler that has the response's bytes at hand (a cached object, an event
encoded once for many watchers) answers with them and skips serializing again.
"""

from __future__ import annotations

import grpc


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
