"""HTTP/1.1 for the REST front: requests in, responses (whole or streamed) out.

kubectl and client-go speak HTTP/1.1 to an ``http://`` server (HTTP/2 only
after TLS's ALPN), so this is what a plain-text apiserver must serve. The
connections arrive through grpclite's hand-over (``GrpcServer.http1_protocol``):
one port serves gRPC and REST. Keep-alive, Content-Length and chunked request
bodies, chunked streamed responses (watch); one request at a time per
connection, as Go's client sends them. What a client can make a connection
hold is bounded: header lines and count, body size (RequestEntityTooLarge).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

from apiserver.limits import MAX_REQUEST_BYTES
from grpclite.context import certificate_error

log = logging.getLogger("apiserver.rest")

MAX_HEADER_LINE = 64 * 1024
MAX_HEADERS = 200
# a connection with no request in flight that sends nothing for this long is closed
IDLE_TIMEOUT = 300.0
REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict",
           410: "Gone", 413: "Request Entity Too Large", 415: "Unsupported Media Type",
           422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass
class Request:
    method: str
    path: str  # percent-decoded
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    # the client certificate TLS verified (ssl's getpeercert() form), and who the gate says it is
    peercert: dict | None = None
    cert_error: str = ""  # why the one presented did not verify (grpclite.tls), "" if it did
    user: object = None
    source: str = ""  # the client's address
    # every header line as sent (lower-case name, value): repeated headers one by one
    # (Impersonate-Group), where ``headers`` joins them with commas
    header_lines: list[tuple[str, str]] = field(default_factory=list)

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    # a streamed body (chunked): its chunks; ``body`` is ignored
    stream: AsyncIterator[bytes] | None = None
    # the connection handed over (an upgrade: exec, attach, port-forward): it writes the whole
    # answer itself, and the connection ends with it
    takeover: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] | None = None


def json_response(obj, status: int = 200, content_type: str = "application/json") -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode() + b"\n", content_type)


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    """A request refused before it reached the handler; ``keep`` when the
    connection can serve the next one (the whole request was read)."""

    def __init__(self, status: int, message: str, *, keep: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.keep = keep


TOO_LARGE = f"Request entity too large: limit is {MAX_REQUEST_BYTES}"
# a body up to this size beyond the limit is read and dropped, so the client gets its 413
# rather than a reset connection; a larger one ends the connection after the answer
DRAIN_LIMIT = 4 * MAX_REQUEST_BYTES


class Http1Server:
    """Serves ``handler`` to every connection given to it. ``protocol`` is the
    factory grpclite's hand-over calls; ``close`` ends every connection."""

    def __init__(self, handler: Handler, error_body: Callable[[int, str], Response]) -> None:
        self.handler = handler
        self.error_body = error_body  # (HTTP code, message) -> a Status response
        self.tasks: set[asyncio.Task] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    def protocol(self) -> asyncio.Protocol:
        reader = asyncio.StreamReader(limit=MAX_HEADER_LINE)
        return asyncio.StreamReaderProtocol(reader, self._connected)

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return self._serve(reader, writer)

    async def close(self) -> None:
        for writer in list(self.writers):
            writer.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                try:
                    request = await asyncio.wait_for(_read_request(reader, writer), IDLE_TIMEOUT)
                except _BadRequest as e:
                    await _write(writer, self.error_body(e.status, str(e)), keep_alive=e.keep)
                    if e.keep:
                        continue
                    return
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError,
                        asyncio.LimitOverrunError, ValueError):
                    return
                if request is None:
                    return
                request.peercert = writer.get_extra_info("peercert") or None
                request.cert_error = certificate_error(writer)
                peer = writer.get_extra_info("peername")
                request.source = peer[0] if isinstance(peer, tuple) and peer else ""
                keep_alive = request.headers.get("connection", "").lower() != "close"
                try:
                    response = await self.handler(request)
                except Exception as e:  # a bug must cost this request, never the server
                    log.exception("REST %s %s failed", request.method, request.path)
                    response = self.error_body(500, f"internal error: {type(e).__name__}: {e}")
                if response.takeover is not None:
                    await response.takeover(reader, writer)
                    return
                if request.method == "HEAD":
                    response.body, response.stream = b"", None
                if not await _write(writer, response, keep_alive=keep_alive, reader=reader):
                    return
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None = None) -> Request | None:
    line = await reader.readline()
    while line in (b"\r\n", b"\n"):  # stray CRLF between requests (RFC 9112 2.2)
        line = await reader.readline()
    if not line:
        return None
    try:
        method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ")
    except ValueError:
        raise _BadRequest(400, "malformed HTTP request line") from None
    if not version.startswith("HTTP/1."):
        raise _BadRequest(400, f"unsupported protocol version {version}")
    headers: dict[str, str] = {}
    lines: list[tuple[str, str]] = []
    for _ in range(MAX_HEADERS + 1):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n"):
            break
        if not raw.endswith(b"\n"):
            raise asyncio.IncompleteReadError(raw, None)
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise _BadRequest(400, "malformed HTTP header line")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
        lines.append((key, value))
    else:
        raise _BadRequest(431, "too many request headers")
    body = b""
    if headers.get("expect", "").lower() == "100-continue" and writer is not None:
        # curl asks before sending a body over 1 KiB; the limits below still apply
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        size = 0
        while True:
            head = await reader.readline()
            n = int(head.split(b";")[0].strip() or b"0", 16)
            if n == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            size += n
            if size > MAX_REQUEST_BYTES:
                raise _BadRequest(413, TOO_LARGE)
            parts.append(await reader.readexactly(n))
            await reader.readline()
        body = b"".join(parts)
    elif "content-length" in headers:
        try:
            n = int(headers["content-length"])
        except ValueError:
            raise _BadRequest(400, "invalid Content-Length") from None
        if n > MAX_REQUEST_BYTES:
            if n > DRAIN_LIMIT:
                raise _BadRequest(413, TOO_LARGE)
            while n > 0:
                n -= len(await reader.readexactly(min(n, 1 << 16)))
            raise _BadRequest(413, TOO_LARGE, keep=True)
        body = await reader.readexactly(n) if n > 0 else b""
    url = urlsplit(target)
    return Request(method.upper(), unquote(url.path), parse_qs(url.query, keep_blank_values=True),
                   headers, body, header_lines=lines)


def _reason(status: int) -> str:
    try:
        return REASONS.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _write(writer: asyncio.StreamWriter, response: Response, *, keep_alive: bool,
                 reader: asyncio.StreamReader | None = None) -> bool:
    """Sends ``response``; False when the connection is gone. A streamed
    body ends when its iterator does, or when the client closes the
    connection (seen on ``reader``: a watch with nothing to send learns it
    without waiting for its next event)."""
    # no Content-Type at all for an answer without one (a redirect; a proxied answer that had none)
    headers = [*([("Content-Type", response.content_type)] if response.content_type else []),
               ("Cache-Control", "no-cache, private"), *response.headers]
    if not keep_alive:
        headers.append(("Connection", "close"))
    if response.stream is None:
        headers.append(("Content-Length", str(len(response.body))))
        writer.write(_head(response.status, headers) + response.body)
        await writer.drain()
        return True
    headers.append(("Transfer-Encoding", "chunked"))
    writer.write(_head(response.status, headers))
    stream = response.stream
    gone = asyncio.ensure_future(reader.read(1)) if reader is not None else asyncio.Future()
    try:
        await writer.drain()
        chunks = aiter(stream)
        while True:
            following = asyncio.ensure_future(anext(chunks))
            await asyncio.wait((following, gone), return_when=asyncio.FIRST_COMPLETED)
            if not following.done():  # the client went away (or sent more than it may)
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
                return False
            try:
                chunk = following.result()
            except StopAsyncIteration:
                break
            if chunk:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
    finally:
        gone.cancel()
        if hasattr(stream, "aclose"):
            await stream.aclose()
