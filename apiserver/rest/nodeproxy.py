"""nodes/<name>/proxy/<path>: the request relayed to that node's kubelet and its answer streamed
back (status, headers, body), as kube-apiserver's node ProxyREST does; what
``kubectl get --raw /api/v1/nodes/N/proxy/stats/summary`` calls.

The caller was authorized for nodes/proxy with the request's verb by the gate; the kubelet then
authorizes the apiserver itself (its kubelet client certificate, system:kubelet-api-admin). The
caller's credentials and Impersonate-* headers stay here, as kube-apiserver drops them once it has
authenticated the request.

The name may be ``<node>``, ``<node>:<port>`` or ``<scheme>:<node>:<port>`` (upstream's
SplitSchemeNamePort). Upstream sends a port other than the kubelet's to that port over plain HTTP,
but only on an address it may proxy to, never loopback; every kubelet of this plane listens on
loopback, so such a port is refused as upstream refuses loopback ("address not allowed"), and only
the kubelet's own port is served.

What one request holds here is bounded: connecting and the kubelet's response head each have a
timeout; the body is copied as the client takes it (a piece at a time, the next read only once the
last was written), never buffered whole; when the client goes away the kubelet connection closes.
Not served: upgrades (Connection: Upgrade) through the proxy, and rewriting a kubelet's redirect.
"""

from __future__ import annotations

import asyncio
import posixpath
from urllib.parse import quote, urlencode

from apiserver import errors, resources
from apiserver.errors import ApiError
from apiserver.kubelet import KubeletClients, kubelet_port, kubelet_unreachable, no_kubelet_endpoint
from apiserver.rest import routing
from apiserver.rest.http1 import Request, Response
from apiserver.rest.status import http_error

# upstream's ProxyREST.ConnectMethods
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# how long the kubelet may take to start its answer once it has the request
RESPONSE_HEAD_TIMEOUT = 60.0
MAX_RESPONSE_HEADERS = 100
PIECE = 64 * 1024  # the most read from the kubelet before it is written to the client
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
               "te", "trailer", "transfer-encoding", "upgrade"}
# request headers that stay here: the caller's credentials, what this hop frames itself
_KEPT_HERE = _HOP_BY_HOP | {"authorization", "host", "content-length", "expect", "x-forwarded-for"}
# response headers the apiserver writes itself
_WRITTEN_HERE = _HOP_BY_HOP | {"content-type", "content-length", "cache-control"}


def split_node_id(node_id: str) -> tuple[str, str]:
    """(node name, port or "") of a proxy request's name; BadRequest as upstream words it."""
    parts = node_id.split(":")
    scheme = ""
    if len(parts) == 3:
        scheme = parts.pop(0)
    if len(parts) > 2 or not parts[0] or scheme not in ("", "http", "https"):
        raise errors.bad_request(f'invalid node request "{node_id}"')
    return parts[0], parts[1] if len(parts) == 2 else ""


def kubelet_path(rest: str, trailing_slash: bool) -> str:
    """The path asked of the kubelet: ``rest`` cleaned (no way above its root), percent-encoded
    again, its trailing slash kept (upstream's JoinPreservingTrailingSlash)."""
    path = posixpath.normpath("/" + rest) if rest else "/"
    path = "/" + path.lstrip("/")
    if trailing_slash and path != "/":
        path += "/"
    return quote(path, safe="/:@!$&'()*+,;=~")


class NodeProxy:
    """``kubelets`` None: no kubelets are dialled (every request is ServiceUnavailable)."""

    def __init__(self, registry, kubelets: KubeletClients | None) -> None:
        self.registry = registry
        self.kubelets = kubelets
        self._nodes = resources.lookup("nodes")

    async def handle(self, req: Request, t: routing.Target) -> Response:
        if req.method not in METHODS:
            return http_error(405, "the server does not allow this method on the requested resource")
        name, port_asked = split_node_id(t.name)
        node = await self.registry.get(self._nodes, "", name)
        port = kubelet_port(node)
        if port <= 0 or self.kubelets is None:
            raise no_kubelet_endpoint(name, "API")
        if port_asked and port_asked != str(port):
            raise errors.bad_request("address not allowed")
        host = self.kubelets.kubelet_host
        target = kubelet_path(t.path, req.path.endswith("/") and bool(t.path))
        if req.query:
            target += "?" + urlencode(req.query, doseq=True)
        head = _request_head(req, target, f"{host}:{port}")

        def unreachable(why: str) -> ApiError:  # upstream's words first: clients look for them
            return kubelet_unreachable(name, f"{host}:{port}", why, prefix="error trying to reach service: ")

        try:
            reader, writer = await self.kubelets.open_http(host, port)
        except (OSError, TimeoutError) as e:
            raise unreachable(str(e) or type(e).__name__) from None
        try:
            writer.write(head + req.body)
            async with asyncio.timeout(RESPONSE_HEAD_TIMEOUT):
                await writer.drain()
                status, headers = await _read_response_head(reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            writer.close()
            raise unreachable(str(e) or type(e).__name__) from None
        except BaseException:  # cancelled: the kubelet connection goes with the request
            writer.close()
            raise
        content_type = headers.get("content-type", "")
        passed = [(k, v) for k, v in headers.items() if k not in _WRITTEN_HERE]
        if req.method == "HEAD" or status in (204, 304) or status < 200:
            writer.close()
            return Response(status, b"", content_type, headers=passed)
        return Response(status, content_type=content_type, headers=passed,
                        stream=_Body(_body(reader, headers), writer))


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


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers (lower-case names; repeated ones joined) of the kubelet's answer;
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


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]):
    """The body's bytes, PIECE at most at a time, as the kubelet framed it (chunked, a length, or
    up to the end of the connection). A body cut short ends the answer where it was cut."""
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
    """The streamed answer: its pieces, and the kubelet connection closed with it, even when the
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
