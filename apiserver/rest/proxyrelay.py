"""The relay behind the proxy subresources (nodes/, pods/ and services/NAME/proxy/PATH): the
client's request sent on to the address its subresource chose, and that server's answer streamed
back (status, headers, body), as kube-apiserver's UpgradeAwareHandler relays a plain request.

What one request holds here is bounded: the caller's connect has its own timeout, the far
server's response head has RESPONSE_HEAD_TIMEOUT and at most MAX_RESPONSE_HEADERS lines; the body
is copied as the client takes it (a piece at a time, the next read only once the last was
written), never buffered whole; when the client goes away the far connection closes. The caller's
credentials and Impersonate-* headers stay here, as kube-apiserver drops them once it has
authenticated the request. Not served: upgrades (Connection: Upgrade) and rewriting the far
server's links or redirects.
"""

from __future__ import annotations

import asyncio
import posixpath
from typing import Awaitable, Callable
from urllib.parse import quote, urlencode

from apiserver.errors import ApiError
from apiserver.rest.http1 import Request, Response

# upstream's ProxyREST.ConnectMethods (nodes, pods and services alike)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# how long the far server may take to start its answer once it has the request
RESPONSE_HEAD_TIMEOUT = 60.0
MAX_RESPONSE_HEADERS = 100
PIECE = 64 * 1024  # the most read from the far server before it is written to the client
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
               "te", "trailer", "transfer-encoding", "upgrade"}
# request headers that stay here: the caller's credentials, what this hop frames itself
_KEPT_HERE = _HOP_BY_HOP | {"authorization", "host", "content-length", "expect", "x-forwarded-for"}
# response headers the apiserver writes itself
_WRITTEN_HERE = _HOP_BY_HOP | {"content-type", "content-length", "cache-control"}

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def split_scheme_name_port(id_: str) -> tuple[str, str, str] | None:
    """(scheme, name, port) of a proxy request's name, upstream's SplitSchemeNamePort: ``name``,
    ``name:port`` or ``scheme:name:port``, scheme "", http or https; None when it is none of them."""
    parts = id_.split(":")
    if len(parts) > 3:
        return None
    scheme = parts.pop(0) if len(parts) == 3 else ""
    if not parts[0] or scheme not in ("", "http", "https"):
        return None
    return scheme, parts[0], parts[1] if len(parts) == 2 else ""


def upstream_path(rest: str, trailing_slash: bool) -> str:
    """The path asked of the far server: ``rest`` cleaned (no way above its root), percent-encoded
    again, its trailing slash kept (upstream's JoinPreservingTrailingSlash)."""
    path = posixpath.normpath("/" + rest) if rest else "/"
    path = "/" + path.lstrip("/")
    if trailing_slash and path != "/":
        path += "/"
    return quote(path, safe="/:@!$&'()*+,;=~")


def request_target(req: Request, rest: str) -> str:
    """The far server's request target for ``rest`` (what follows proxy/), with the query."""
    target = upstream_path(rest, req.path.endswith("/") and bool(rest))
    if req.query:
        target += "?" + urlencode(req.query, doseq=True)
    return target


async def relay(req: Request, rest: str, host: str, open_: Opener,
                unreachable: Callable[[BaseException], ApiError]) -> Response:
    """``req`` sent for ``rest`` (what follows proxy/) to the server ``open_`` connects to
    (``host``: its Host header), and the answer as a streamed Response. ``open_`` raises the
    ApiError its subresource answers when it cannot connect; a failure after that (OSError,
    TimeoutError, a response cut short or not HTTP: ValueError) is ``unreachable(the exception)``.

    A GET or HEAD of the proxy's root without its trailing slash (``.../proxy``) is redirected to
    it (301), as upstream does, so that the far server's relative links resolve under it."""
    if not rest and not req.path.endswith("/") and req.method in ("GET", "HEAD"):
        location = quote(req.path, safe="/:@!$&'()*+,;=~") + "/"
        if req.query:
            location += "?" + urlencode(req.query, doseq=True)
        return Response(301, b"", "", headers=[("Location", location)])
    head = _request_head(req, request_target(req, rest), host)
    reader, writer = await open_()
    try:
        writer.write(head + req.body)
        async with asyncio.timeout(RESPONSE_HEAD_TIMEOUT):
            await writer.drain()
            status, headers = await read_response_head(reader)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        writer.close()
        raise unreachable(e) from None
    except BaseException:  # cancelled: the far connection goes with the request
        writer.close()
        raise
    content_type = headers.get("content-type", "")
    passed = [(k, v) for k, v in headers.items() if k not in _WRITTEN_HERE]
    if req.method == "HEAD" or status in (204, 304) or status < 200:
        writer.close()
        return Response(status, b"", content_type, headers=passed)
    return Response(status, content_type=content_type, headers=passed,
                    stream=_Body(body_pieces(reader, headers), writer))


def _request_head(req: Request, target: str, host: str) -> bytes:
    lines = [f"{req.method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in req.header_lines
              if k not in _KEPT_HERE and not k.startswith("impersonate-") and "\r" not in v]
    if req.source:
        lines.append(f"X-Forwarded-For: {req.source}")
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(req.body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers (lower-case names; repeated ones joined) of the far server's answer;
    ValueError when it is not HTTP/1.x."""
    line = (await reader.readuntil(b"\n")).decode("latin-1").rstrip("\r\n")
    version, _, rest = line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"malformed HTTP response {line[:80]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_RESPONSE_HEADERS):
        raw = (await reader.readuntil(b"\n")).decode("latin-1")
        if raw in ("\r\n", "\n"):
            return int(code), headers
        name, sep, value = raw.partition(":")
        if not sep:
            raise ValueError("malformed HTTP response header")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    raise ValueError("too many response headers")


async def body_pieces(reader: asyncio.StreamReader, headers: dict[str, str]):
    """The body's bytes, PIECE at most at a time, as the far server framed it (chunked, a length,
    or up to the end of the connection). A body cut short ends the answer where it was cut."""
    try:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await reader.readuntil(b"\n")).split(b";")[0].strip() or b"0", 16):
                while size > 0:
                    piece = await reader.readexactly(min(size, PIECE))
                    size -= len(piece)
                    yield piece
                await reader.readuntil(b"\n")
            return
        if "content-length" in headers:
            left = int(headers["content-length"])
            while left > 0:
                piece = await reader.readexactly(min(left, PIECE))
                left -= len(piece)
                yield piece
            return
        while piece := await reader.read(PIECE):
            yield piece
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        return


class _Body:
    """The streamed answer: its pieces, and the far connection closed with it, even when the
    client went away before the first piece was asked for."""

    def __init__(self, pieces, writer: asyncio.StreamWriter) -> None:
        self.pieces = pieces
        self.writer = writer

    def __aiter__(self):
        return self.pieces

    async def aclose(self) -> None:
        try:
            await self.pieces.aclose()
        finally:
            self.writer.close()
