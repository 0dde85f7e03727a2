"""grpclite: gRPC over HTTP/2, served from the application's own event loop.

grpcio's servers hand every message between threads: the handler's loop, the
C core's I/O threads and the completion-queue poller. On the 2-core virtual machines
this project runs on, those hand-offs cost more than what etcdlite or the
apiserver does with a request,
and they set the pace of a watch fan-out, where every response to every
watcher makes its own round trip through the threads. grpclite speaks the
wire protocol itself (HTTP/2 framing, flow control, gRPC's message and status
rules) in the loop that runs the handlers, so a call costs one read and one
write of the socket, and the responses of one turn of the loop leave in one
write. The handlers are ordinary grpcio servicers, registered through the
generated add_*Servicer_to_server functions.

What is implemented is what gRPC clients use: length-prefixed messages,
grpc-timeout deadlines, grpc-status/grpc-message trailers (trailers-only for
errors before any message); requests compressed with gzip or deflate are
accepted (responses go uncompressed, which the protocol allows), other
encodings get UNIMPLEMENTED. No server push, no HTTP/1 upgrade.

What one connection can make the server hold is bounded (issue 24): its
header blocks, what it sends ahead of its calls (both receive windows,
enforced), its open calls (SETTINGS_MAX_CONCURRENT_STREAMS), what waits to be
sent to it, its PINGs and resets, its cached headers, and how long it may
stay silent; bad frames get RFC 9113's errors. The limits are connection.py's
and calm.py's constants, the ones to tune GrpcServer's parameters.

The modules, one idea each:
- wire: the protocol's constants, frame and message structs, our header blocks (public: clients use it)
- headers: HPACK decoding with a cache, a request's gRPC header fields
- flow: a flow-control window (what we send and what we receive)
- calm: how often a client may PING or reset streams (floods get GOAWAY ENHANCE_YOUR_CALM)
- context: ServicerContext, what a handler sees of its call
- stream: one call, its messages in and out
- connection: one client connection, frames in and out
- eager: running a unary handler without an asyncio.Task
- server: GrpcServer (listen, start, stop, registration, flushing, deadlines), server_ssl_context
- tls: TLS over OpenSSL that asks for a client certificate and says whether it verified, never failing
  the handshake on it (kube-apiserver's and the kubelet's way); Python's ssl otherwise (etcdlite)
- servicer: registering a servicer whose responses may be pre-serialized bytes
"""

from __future__ import annotations

from grpclite.context import ServicerContext, context_of, metadata_of
from grpclite.server import GrpcServer, server_ssl_context
from grpclite.servicer import add_servicer, serialize

__all__ = ["GrpcServer", "ServicerContext", "add_servicer", "context_of", "metadata_of", "serialize",
           "server_ssl_context"]
