"""The little HTTP/1.1 the stream endpoints need: one request head read with bounds, and a
whole answer written (errors as a Kubernetes Status, which kubectl shows as the server's words).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

MAX_HEAD_LINE = 16 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT = 10.0  # seconds a client may take to send its request head
REASONS = {101: "Switching Protocols", 200: "OK", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
STATUS_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
                  500: "InternalError", 502: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


class BadRequest(Exception):
    """The request could not be read (malformed, too large)."""


@dataclass
class RequestHead:
    method: str
    target: str                   # as sent: path and query
    path: str                     # percent-decoded
    query: dict[str, list[str]]
    headers: dict[str, str]       # lower-case names; repeated ones joined with ","

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        """A boolean query parameter as Kubernetes reads them ("1", "true")."""
        return self.param(name).lower() in ("1", "true", "yes")

    def upgrade(self) -> str:
        """The protocol asked for in Upgrade (lower-case) when Connection says upgrade; "" else."""
        if "upgrade" not in [t.strip().lower() for t in self.headers.get("connection", "").split(",")]:
            return ""
        return self.headers.get("upgrade", "").strip().lower()


def parse_head(lines: list[bytes]) -> RequestHead:
    """A request head from its lines (request line first, no blank line)."""
    try:
        method, target, version = lines[0].decode("latin-1").rstrip("\r\n").split(" ")
    except (ValueError, IndexError):
        raise BadRequest("malformed HTTP request line") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest(f"unsupported protocol version {version}")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest("malformed HTTP header line")
        key, value = name.strip().lower(), value.strip()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    url = urlsplit(target)
    return RequestHead(method.upper(), target, unquote(url.path),
                       parse_qs(url.query, keep_blank_values=True), headers)


async def read_head(reader: asyncio.StreamReader) -> RequestHead | None:
    """The next request head on the connection; None when the client closed it first."""
    lines: list[bytes] = []
    async with asyncio.timeout(HEAD_TIMEOUT):
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                if not lines and not e.partial:
                    return None
                raise BadRequest("the request head ended early") from None
            except asyncio.LimitOverrunError:
                raise BadRequest("request header line too long") from None
            if line in (b"\r\n", b"\n"):
                if not lines:
                    continue
                break
            lines.append(line)
            if len(lines) > MAX_HEADERS + 1:
                raise BadRequest("too many request headers")
    return parse_head(lines)


def head_bytes(req: RequestHead, target: str | None = None, drop: tuple[str, ...] = ()) -> bytes:
    """The request head again (for a server it is passed on to), with another target and
    without the headers named in ``drop`` (lower-case)."""
    lines = [f"{req.method} {target or req.target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in req.headers.items() if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response_bytes(status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
                   headers: list[tuple[str, str]] | None = None, *, keep_alive: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers or ()]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def status_body(code: int, message: str, reason: str = "") -> bytes:
    """A meta/v1 Status failure: kubectl shows its message as "Error from server (Reason): ..."."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason or STATUS_REASONS.get(code, "InternalError"),
                       "code": code}).encode()


def status_response(code: int, message: str, reason: str = "") -> bytes:
    return response_bytes(code, status_body(code, message, reason), "application/json")
