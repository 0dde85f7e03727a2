"""What a handler sees of its call: grpc.aio's ServicerContext, and how a call ends early.

Handlers are grpcio servicers; they get a context with grpc.aio's methods
(abort, set_code, set_details, peer, invocation_metadata, auth_context,
time_remaining, ...) plus try_write/writable for a handler that writes without
awaiting each message. A callback handler (GrpcServer.set_unary_callback) gets
no context: `context_of(reply)` makes one, `metadata_of(reply)` is the cheap way
to its call's metadata.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from grpclite.stream import Stream


class HandlerCallDetails(grpc.HandlerCallDetails):
    """What a generic handler is asked to serve (grpc.GenericRpcHandler.service)."""

    def __init__(self, method: str, invocation_metadata):
        self.method = method
        self.invocation_metadata = invocation_metadata


class Aborted(Exception):
    """A call ends with this (code, details) before its handler sees the request."""


class ServicerContext:
    """What a handler sees: grpc.aio.ServicerContext's methods that matter here."""

    __slots__ = ("_stream", "_code", "_details", "_trailing")

    def __init__(self, stream: Stream):
        self._stream = stream
        self._code = None
        self._details = ""
        self._trailing = ()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()):
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs an error code")
        self._code, self._details = code, details
        if trailing_metadata:  # as grpc.aio: else what set_trailing_metadata set stays
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def set_trailing_metadata(self, trailing_metadata) -> None:
        self._trailing = tuple(trailing_metadata)

    def invocation_metadata(self):
        return self._stream.metadata

    def peer(self) -> str:
        return self._stream.conn.peer

    def auth_context(self) -> dict[str, list[bytes]]:
        """As grpc.aio's: on a TLS connection whose client presented a
        certificate the server verified, its security type and the
        certificate's common name (x509_common_name); else empty."""
        transport = self._stream.conn.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        if not cert:
            return {}
        names = [value.encode() for rdn in cert.get("subject", ()) for name, value in rdn if name == "commonName"]
        context = {"transport_security_type": [b"ssl"]}
        if names:
            context["x509_common_name"] = names
        return context

    def peer_certificate(self) -> dict | None:
        """The client certificate the TLS handshake verified (ssl's getpeercert()
        form: subject, issuer, notAfter, ...), or None."""
        transport = self._stream.conn.transport
        return (transport.get_extra_info("peercert") or None) if transport is not None else None

    def peer_certificate_error(self) -> str:
        """Why the client certificate presented did not verify (grpclite.tls), "" when it
        did or none was presented."""
        return certificate_error(self._stream.conn.transport)

    def time_remaining(self):
        d = self._stream.deadline
        return None if d is None else max(0.0, d - time.monotonic())

    def cancelled(self) -> bool:
        return self._stream.cancelled

    def done(self) -> bool:
        return self._stream.finished

    async def send_initial_metadata(self, initial_metadata=()) -> None:
        self._stream.send_headers()

    async def write(self, message) -> None:
        await self._stream.send_message(self._stream.serialize(message))

    # grpclite's own, for a handler that writes without awaiting each message:

    def try_write(self, message) -> bool:
        """Queue message on the stream now, if the stream holds less than its
        share of unsent data; False (nothing done) if not, or if the call ended."""
        stream = self._stream
        if not stream.writable_now():
            return False
        stream.queue_message(stream.serialize(message))
        return True

    def writable_now(self) -> bool:
        return self._stream.writable_now()

    async def writable(self) -> None:
        """Until try_write would write, or the call ended (done())."""
        stream = self._stream
        while not (stream.finished or stream.writable_now()):
            if stream.drained is None or stream.drained.done():
                stream.drained = asyncio.get_running_loop().create_future()
            await stream.drained

    async def read(self):
        return await self._stream.next_request()


def certificate_error(transport) -> str:
    """Why the client certificate presented on ``transport`` (a stream's, or a grpclite.tls
    transport handed to another protocol) did not verify, "" when it did, none was presented,
    or the TLS is Python's (which verified it in the handshake)."""
    cert = transport.get_extra_info("client_certificate") if transport is not None else None
    return cert.failure() if cert is not None else ""


def context_of(reply) -> ServicerContext:
    """The context of the call that a callback handler's `reply` answers."""
    return ServicerContext(reply.__self__)


def metadata_of(reply):
    """The request metadata of the call that a callback handler's `reply`
    answers, as invocation_metadata() gives it."""
    return reply.__self__.metadata
