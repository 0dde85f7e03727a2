"""etcd's --listen-metrics-urls: a small HTTP/1.1 server in the member's
event loop answering `GET /metrics` (`MemberMetrics`) and `GET /health`.

It faces whoever can reach the port, so every resource a client can hold is
bounded: a request's line and headers must fit in MAX_HEAD_BYTES (else 431)
and arrive within HEAD_TIMEOUT (an idle keep-alive connection too, else it
is closed), an answer must be taken within WRITE_TIMEOUT, and at most
MAX_CONNECTIONS are open at once (more are closed as they come). /health
takes GET only (405 otherwise), /metrics any method (HEAD without the body),
as etcd's; unknown paths get Go's 404. A request
with a body is answered, then its connection closed (the body is not read).
"""

from __future__ import annotations

import asyncio
import logging

from .metrics import CONTENT_TYPE, MemberMetrics

log = logging.getLogger("etcdlite")

MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0
MAX_CONNECTIONS = 32
# etcd 3.4's /health asks for a quorum read and gives it this long
HEALTH_READ_TIMEOUT = 1.0

_TEXT = "text/plain; charset=utf-8"
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 412: "Precondition Failed",
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout"}


def response(status: int, body: bytes = b"", content_type: str | None = _TEXT, *, head: bool = False,
             close: bool = False, extra: tuple = ()) -> bytes:
    """An HTTP/1.1 response; `head`: without its body (a HEAD's answer);
    `extra`: more header lines."""
    lines = [f"HTTP/1.1 {status} {REASONS[status]}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"Content-Length: {len(body)}", *extra]
    if status >= 400:
        lines.append("X-Content-Type-Options: nosniff")  # as Go's http.Error
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


class BadRequest(Exception):
    pass


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """(method, path, version, headers with lower-case names) of a request's
    line and headers (ending in CRLF CRLF); BadRequest if it is not HTTP/1.x."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("not ASCII") from None
    line, *fields = text[:-4].split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/") \
            or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest("malformed request line")
    headers: dict[str, str] = {}
    for field in fields:
        name, sep, value = field.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise BadRequest("malformed header")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1].split("?", 1)[0], parts[2], headers


class MetricsListener:
    """One --listen-metrics-urls URL. `raft`: the member's RaftNode (is there
    a leader); `read_barrier`: Backend.read_barrier, the quorum read of the
    health check."""

    def __init__(self, metrics: MemberMetrics, raft, read_barrier, alarmed=lambda: False) -> None:
        self.metrics = metrics
        self.raft = raft
        self.read_barrier = read_barrier
        self.alarmed = alarmed
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self, host: str, port: int) -> int:
        """Serve on host:port; the port bound."""
        self._server = await asyncio.start_server(self._connection, host, port, limit=MAX_HEAD_BYTES)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def healthy(self) -> bool:
        """etcd 3.4's check: no alarm is active (NOSPACE: etcdlite.alarms),
        a leader is known and a quorum read succeeds within a second."""
        if self.alarmed() or not self.raft.has_leader:
            return False
        try:
            await asyncio.wait_for(self.read_barrier(), HEALTH_READ_TIMEOUT)
        except Exception:
            return False
        return True

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._writers.add(writer)
        try:
            while True:
                answer, close = await self._serve_one(reader)
                if answer:
                    writer.write(answer)
                    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                if close:
                    return
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass  # gone, idle or too slow: closed
        except Exception:
            log.exception("metrics listener: a request failed")
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader) -> tuple[bytes, bool]:
        """(the answer to the next request, whether to close after it)."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            return response(431, b"431 Request Header Fields Too Large", close=True), True
        except asyncio.IncompleteReadError as err:
            # the client closed: answer what it sent, if it looks like a request
            return (response(400, b"400 Bad Request", close=True) if err.partial.strip() else b""), True
        try:
            method, path, version, headers = parse_head(head)
        except BadRequest:
            return response(400, b"400 Bad Request", close=True), True
        close = (version == "HTTP/1.0" or headers.get("connection", "").lower() == "close"
                 or "transfer-encoding" in headers or headers.get("content-length", "0") != "0")
        answer = await self.answer(method, path, close)
        return (answer or response(404, b"404 page not found\n", head=method == "HEAD", close=close)), close

    async def answer(self, method: str, path: str, close: bool) -> bytes | None:
        """The answer to `method` on /metrics or /health (also on the client
        port: etcdlite.server.gateway); None for another path."""
        head_only = method == "HEAD"
        if path == "/metrics":  # any method, as Prometheus' handler
            return response(200, self.metrics.render(), CONTENT_TYPE, head=head_only, close=close)
        if path == "/health":
            if method != "GET":  # as etcd: GET only
                return response(405, b"Method Not Allowed\n", head=head_only, close=close, extra=("Allow: GET",))
            if await self.healthy():
                self.metrics.health_success += 1
                return response(200, b'{"health":"true"}', close=close)
            self.metrics.health_failures += 1
            return response(503, b'{"health":"false"}\n', close=close)
        return None
