"""etcd 3.4's gRPC gateway on the client port: JSON over HTTP/1.1.

grpclite hands every connection that does not open with HTTP/2's preface to
`Gateway.protocol` (GrpcServer.http1_protocol), so one port serves gRPC and
this. `POST /v3/<service>/<call>` (and `/v3beta/`, as etcd 3.4; not
`/v3alpha/`, which 3.4 dropped) runs the member's own servicers in-process
(`gateway_calls`): auth (the token in an `Authorization` header), errors and
consistency are the gRPC calls'. Bodies and answers are JSON as etcd's gateway writes it
(`gateway_json`); errors are `{"error","message","code"}` with the HTTP status
grpc-gateway v1 gives the gRPC code. Streams (watch, lease keep-alive,
snapshot, election observe) answer with chunked `{"result":...}` lines; the
client-streaming ones read their requests as JSON values one after another
in the body. `/health` and `/metrics` are the metrics listener's
(`MetricsListener.answer`), `/version` is etcd's.

What a client can make the member hold is bounded: the request line and
headers (MAX_HEAD_BYTES, else 431), a request body (max request bytes +
gRPC's overhead, as the gRPC port; base64 and JSON may take BODY_FACTOR
times that), the connections open at once (MAX_CONNECTIONS, more are
closed as they come), how long a connection may sit idle or take to send a
request (IDLE_TIMEOUT, BODY_TIMEOUT) or to take a whole answer
(WRITE_TIMEOUT). A stream's answers are written as the client reads them:
one that does not read leaves them to the servicer's own bounds (a watch
stream's queue, then its watchers fall behind and catch up later).
"""

from __future__ import annotations

import asyncio
import codecs
import logging

import grpc

from etcdlite.config import API_VERSION, GRPC_OVERHEAD_BYTES
from etcdlite.server.gateway_calls import CallError, GatewayContext, Route, call_path, outcome, routes, too_large
from etcdlite.server.gateway_json import JSONError, dumps, fill, message_json, parse, split_values
from etcdlite.server.learner_gate import refusal
from etcdlite.server.metrics_listener import REASONS, BadRequest, MetricsListener, parse_head, response

log = logging.getLogger("etcdlite.gateway")

MAX_HEAD_BYTES = 64 * 1024
MAX_CONNECTIONS = 1024
# a connection between requests, and a request's line and headers
IDLE_TIMEOUT = 60.0
# a unary request's body, from its headers on
BODY_TIMEOUT = 30.0
WRITE_TIMEOUT = 30.0
# JSON's share of a body: base64 takes 4/3 of the bytes, names and quotes the rest
BODY_FACTOR = 2
# etcd's /version: the server's version and the cluster's (major.minor.0)
VERSION_BODY = dumps({"etcdserver": API_VERSION, "etcdcluster": ".".join(API_VERSION.split(".")[:2]) + ".0"})

_CORS = ("Access-Control-Allow-Headers: accept, content-type, authorization",
         "Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE",
         "Access-Control-Allow-Origin: *")
_JSON = "application/json"
_FROM_GRPC = ("Grpc-Metadata-Content-Type: application/grpc",)

# grpc-gateway v1's HTTP status for a gRPC code
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 408, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500,
}


def error_json(code: grpc.StatusCode, message: str) -> bytes:
    return dumps({"error": message, "message": message, "code": code.value[0]})


def _error_answer(code: grpc.StatusCode, message: str, close: bool) -> bytes:
    return response(HTTP_STATUS.get(code, 500), error_json(code, message), _JSON, close=close, extra=_CORS)


class Gateway:
    """The gateway of one member; `protocol` is its GrpcServer's http1_protocol."""

    def __init__(self, member) -> None:
        self.member = member
        self.routes = routes(member)
        self.max_receive = member.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES
        self.max_body = BODY_FACTOR * self.max_receive
        self.health = MetricsListener(member.metrics, member.raft, member.read_barrier, member.metrics.alarmed)
        self.tasks: set[asyncio.Task] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    def protocol(self) -> asyncio.Protocol:
        reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES)
        return asyncio.StreamReaderProtocol(reader, self._connected)

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if len(self.writers) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return None
        self.writers.add(writer)
        return self._serve(reader, writer)

    async def close(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()  # the task StreamReaderProtocol made for this coroutine
        self.tasks.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # gone, idle, too slow or a malformed body: closed
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("gateway: a request failed")
        finally:
            self.tasks.discard(task)
            self.writers.discard(writer)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # what it did not read is dropped
            else:
                writer.close()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answers the next request; whether the connection goes on."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        except asyncio.LimitOverrunError:
            await self._send(writer, response(431, b"431 Request Header Fields Too Large", close=True))
            return False
        except asyncio.IncompleteReadError as err:
            if err.partial.strip():
                await self._send(writer, response(400, b"400 Bad Request", close=True))
            return False
        try:
            method, path, version, headers = parse_head(head)
        except BadRequest:
            await self._send(writer, response(400, b"400 Bad Request", close=True))
            return False
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        try:
            length = 0 if chunked else int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            await self._send(writer, response(400, b"400 Bad Request", close=True))
            return False
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        close = chunked or length > 0 or not keep  # a body not read: the connection ends after the answer
        call = call_path(path)
        if call is not None:
            route = self.routes.get(call)
            if route is not None and method == "POST":
                return await self._call(route, reader, writer, headers, chunked, length, keep)
            if route is None:
                answer = response(404, b"Not Found\n", close=close, extra=_CORS)
            elif method == "OPTIONS":  # a CORS preflight
                answer = response(200, b"", None, close=close, extra=_CORS)
            else:
                answer = response(405, b"Method Not Allowed\n", close=close, extra=_CORS)
        elif path == "/version":
            if method == "GET":
                answer = response(200, VERSION_BODY, _JSON, close=close, extra=_CORS)
            else:
                answer = response(405, b"Method Not Allowed\n", close=close, extra=("Allow: GET", *_CORS))
        else:
            answer = await self.health.answer(method, path, close)
            if answer is None:
                answer = response(404, b"404 page not found\n", close=close, extra=_CORS)
        await self._send(writer, answer)
        return not close

    # --- bodies -------------------------------------------------------------------

    async def _body(self, reader, writer, headers, chunked: bool, length: int, timeout: float | None):
        """The request body, a piece at a time as it comes (the caller bounds
        what it keeps); IncompleteReadError if the client goes away before
        its end; `timeout`: for the whole body."""
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None

        async def within(awaitable):
            if deadline is None:
                return await awaitable
            return await asyncio.wait_for(awaitable, max(0.0, deadline - loop.time()))

        async def exactly(n: int):
            while n > 0:
                piece = await within(reader.read(min(n, 1 << 16)))
                if not piece:
                    raise asyncio.IncompleteReadError(b"", n)
                n -= len(piece)
                yield piece

        if not chunked:
            async for piece in exactly(length):
                yield piece
            return
        while True:
            line = await within(reader.readuntil(b"\r\n"))
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError
            except ValueError:
                raise asyncio.IncompleteReadError(line, None) from None  # not a chunked body: closed
            if size == 0:
                while await within(reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return
            async for piece in exactly(size):
                yield piece
            if await within(reader.readexactly(2)) != b"\r\n":
                raise asyncio.IncompleteReadError(b"", None)

    # --- calls ----------------------------------------------------------------------

    async def _call(self, route: Route, reader, writer, headers, chunked: bool, length: int, keep: bool) -> bool:
        token = headers.get("authorization")
        context = GatewayContext((("authorization", token),) if token else (), _peer(writer))
        if route.client_stream:
            refused = refusal(route.path, None) if self.member.learner else None
            if refused is not None:  # the body not read: the connection ends
                await self._send(writer, _error_answer(*refused, close=True))
                return False
            return await self._bidi(route, context, reader, writer, headers, chunked, length, keep)
        if length > self.max_body:
            # not read: refused as the gRPC port refuses a message that size
            err = too_large(length, self.max_receive)
            await self._send(writer, _error_answer(err.code, err.message, close=True))
            return False
        body = bytearray()
        async for piece in self._body(reader, writer, headers, chunked, length, BODY_TIMEOUT):
            body += piece
            if len(body) > self.max_body:
                err = too_large(len(body), self.max_receive)
                await self._send(writer, _error_answer(err.code, err.message, close=True))
                return False
        try:
            request = parse(bytes(body), route.request_class)
        except JSONError as err:
            await self._send(writer, _error_answer(grpc.StatusCode.INVALID_ARGUMENT, str(err), not keep))
            return keep
        size = request.ByteSize()
        if size > self.max_receive:
            err = too_large(size, self.max_receive)
            await self._send(writer, _error_answer(err.code, err.message, not keep))
            return keep
        refused = refusal(route.path, request) if self.member.learner else None
        if refused is not None:
            await self._send(writer, _error_answer(*refused, not keep))
            return keep
        if route.server_stream:
            return await self._stream(route, route.handler(request, context), context, reader, writer, keep, None)
        try:
            answer = await route.handler(request, context)
            error = outcome(context, None, "") if context._code not in (None, grpc.StatusCode.OK) else None
        except Exception as exc:  # noqa: BLE001 (AbortError, EtcdError, a bug)
            error = outcome(context, exc, route.handler.__name__)
        if error is not None:
            await self._send(writer, _error_answer(error.code, error.message, not keep))
            return keep
        if type(answer) is bytes:  # a servicer's pre-serialized answer
            answer = route.response_class.FromString(answer)
        await self._send(writer, response(200, message_json(answer), _JSON, close=not keep,
                                          extra=(*_CORS, *_FROM_GRPC)))
        return keep

    async def _bidi(self, route: Route, context, reader, writer, headers, chunked, length, keep) -> bool:
        """A client-streaming call: the requests are the JSON values of the
        body, read as the servicer asks for them."""
        body = self._body(reader, writer, headers, chunked, length, None)
        decoder = _Values(body, self.max_body, route.request_class)
        try:
            first = await decoder.next()
        except (JSONError, CallError) as err:
            # grpc-gateway gives a first request it cannot decode as Unknown
            code = err.code if isinstance(err, CallError) else grpc.StatusCode.UNKNOWN
            message = err.message if isinstance(err, CallError) else str(err)
            await self._send(writer, _error_answer(code, message, close=True))
            return False
        body_done = asyncio.get_running_loop().create_future()

        async def requests():
            request = first
            try:
                while request is not None:
                    yield request
                    request = await decoder.next()
                body_done.set_result(True)
            except (JSONError, CallError) as err:
                # as grpc-gateway: the requests end there, the answers go on (the rest of the
                # body is not read, so the connection ends with the call)
                log.info("gateway: %s: a streamed request ends the requests: %s", route.handler.__name__, err)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                body_done.set_result(False)  # the client went away

        return await self._stream(route, route.handler(requests(), context), context, reader, writer, keep,
                                  body_done)

    async def _stream(self, route: Route, answers, context, reader, writer, keep: bool,
                      body_done: asyncio.Future | None) -> bool:
        """Writes a server-streaming call's answers as the client takes them,
        until they end, the call fails (an error line) or the client goes.
        `body_done`: set when the body is all read (None: it was already)."""
        writer.write(b"\r\n".join([b"HTTP/1.1 200 OK", *(h.encode() for h in _CORS),
                                   b"Content-Type: application/json", *(h.encode() for h in _FROM_GRPC),
                                   b"Transfer-Encoding: chunked", b"", b""]))
        gone = asyncio.get_running_loop().create_future()
        watching = asyncio.ensure_future(_watch_gone(reader, body_done, gone))
        following = None
        try:
            while True:
                following = asyncio.ensure_future(anext(answers))
                await asyncio.wait((following, gone), return_when=asyncio.FIRST_COMPLETED)
                if not following.done():  # the client went away (or sent what it may not)
                    return False
                try:
                    answer = following.result()
                except StopAsyncIteration:
                    following = None
                    break
                except Exception as exc:  # noqa: BLE001 (AbortError, EtcdError, a bug)
                    following = None
                    err = outcome(context, exc, route.handler.__name__)
                    status = HTTP_STATUS.get(err.code, 500)
                    line = dumps({"error": {"grpc_code": err.code.value[0], "http_code": status,
                                            "message": err.message, "http_status": REASONS.get(status, "")}})
                    await self._chunk(writer, line + b"\n")
                    break
                following = None
                if type(answer) is bytes:
                    answer = route.response_class.FromString(answer)
                await self._chunk(writer, b'{"result":' + message_json(answer) + b"}\n")
            writer.write(b"0\r\n\r\n")
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            # the connection serves on if its body was all read and nothing came after it
            return keep and (body_done is None or (body_done.done() and body_done.result())) and not gone.done()
        finally:
            context._done = True
            watching.cancel()
            if following is not None and not following.done():
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
            await asyncio.gather(answers.aclose(), return_exceptions=True)

    async def _chunk(self, writer, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()  # no deadline: a stream's client may read slowly (see the module's docstring)


def _peer(writer: asyncio.StreamWriter) -> str:
    """The client's address as gRPC names it (ServicerContext.peer)."""
    addr = writer.get_extra_info("peername")
    if not isinstance(addr, tuple) or len(addr) < 2:
        return ""
    return f"ipv6:[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"ipv4:{addr[0]}:{addr[1]}"


class _Values:
    """The JSON values of a streamed body, one request at a time; None at
    its end. A value may not take more than `limit` bytes."""

    def __init__(self, pieces, limit: int, request_class) -> None:
        self.pieces = pieces
        self.limit = limit
        self.request_class = request_class
        self.text = ""
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.ended = False

    async def next(self):
        while True:
            try:
                found = split_values(self.text)
            except JSONError as err:
                if self.ended or str(err) != "unexpected EOF":
                    raise
                found = False  # incomplete: more to read
            if found:
                value, end = found
                self.text = self.text[end:]
                request = self.request_class()
                fill(request, value)
                return request
            if self.ended:
                return None
            if len(self.text) > self.limit:
                raise too_large(len(self.text), self.limit)
            try:
                piece = await anext(self.pieces)
                self.text += self.utf8.decode(piece)
            except StopAsyncIteration:
                self.ended = True


async def _watch_gone(reader: asyncio.StreamReader, body_done: asyncio.Future | None, gone: asyncio.Future) -> None:
    """Sets `gone` when the client of a stream goes away: its body ended
    short, or, once the body is all read, the connection ends or brings
    more (a client may not send a request before a stream's end)."""
    try:
        if body_done is None or await body_done:
            await reader.read(1)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001
        pass
    if not gone.done():
        gone.set_result(None)
