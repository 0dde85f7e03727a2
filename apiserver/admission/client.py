"""The apiserver's HTTPS client for admission webhooks: one POST of an
AdmissionReview, on the event loop (a slow webhook holds only the requests it
admits), within the webhook's timeout from connect to the last byte, its
answer read up to MAX_RESPONSE_BYTES. The server's certificate is verified
against the webhook's caBundle (the system's roots without one), for the URL's
host or, for a Service, ``<name>.<namespace>.svc`` as kube-apiserver does.

Errors are CallError with the words client-go's transport would use
(``Post "https://...": dial tcp ...: connect: connection refused``); the
dispatcher wraps them as kube-apiserver does (``failed calling webhook``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import OrderedDict
from urllib.parse import urlsplit

from apiserver.podnetwork import PodNetwork

# a webhook's answer is an AdmissionReview: a patch, a message, warnings. kube-apiserver
# reads the body through client-go without a limit of its own; one is kept here so that a
# webhook cannot make the apiserver hold more than this per call
MAX_RESPONSE_BYTES = 3 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
_CONTEXTS = 32  # SSL contexts kept, by caBundle


class CallError(Exception):
    """The webhook could not be called, or did not answer with an AdmissionReview."""


_contexts: OrderedDict[bytes, ssl.SSLContext] = OrderedDict()


def _context(ca_bundle: bytes) -> ssl.SSLContext:
    """A client context trusting ``ca_bundle`` (PEM), or the system's roots for b""."""
    key = hashlib.sha256(ca_bundle).digest()
    ctx = _contexts.get(key)
    if ctx is not None:
        _contexts.move_to_end(key)
        return ctx
    ctx = ssl.create_default_context()
    if ca_bundle:
        ctx = ssl.create_default_context(cadata=ca_bundle.decode("ascii", errors="replace"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _contexts[key] = ctx
    if len(_contexts) > _CONTEXTS:
        _contexts.popitem(last=False)
    return ctx


def target(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an https URL."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 443, parts.path or "/"


async def post(url: str, body: bytes, *, ca_bundle: bytes, timeout: float,
               connect_to: tuple[str, int] | None = None, server_name: str = "", netns: str = "") -> bytes:
    """The body of the webhook's 200 answer to POSTing ``body`` (JSON) to ``url``
    (which carries ``?timeout=Ns`` as kube-apiserver's requests do). ``connect_to``: the
    address to dial instead of the URL's host (a Service's endpoint), inside the network
    namespace ``netns`` if given; ``server_name``: the name its certificate must carry.
    Raises CallError."""
    host, port, path = target(url)
    query = urlsplit(url).query
    dial = connect_to or (host, port)
    name = server_name or host
    try:
        ctx = _context(ca_bundle)
    except (ssl.SSLError, ValueError) as e:
        raise CallError(f'Post "{url}": unable to load root certificates: {e}') from None
    writer = None
    try:
        async with asyncio.timeout(timeout):
            try:
                if netns:
                    sock = await PodNetwork(netns).dial(*dial)
                    reader, writer = await asyncio.open_connection(
                        sock=sock, ssl=ctx, server_hostname=name, limit=MAX_HEADER_BYTES,
                        ssl_handshake_timeout=timeout)
                else:
                    reader, writer = await asyncio.open_connection(
                        dial[0], dial[1], ssl=ctx, server_hostname=name,
                        limit=MAX_HEADER_BYTES, ssl_handshake_timeout=timeout)
            except ssl.SSLCertVerificationError as e:
                raise CallError(f'Post "{url}": tls: failed to verify certificate: {e.verify_message}') from None
            except ssl.SSLError as e:
                raise CallError(f'Post "{url}": remote error: tls: {e.reason or e}') from None
            except OSError as e:
                why = "connection refused" if isinstance(e, ConnectionRefusedError) else (e.strerror or str(e))
                raise CallError(f'Post "{url}": dial tcp {dial[0]}:{dial[1]}: connect: {why}') from None
            head = (f"POST {path}{'?' + query if query else ''} HTTP/1.1\r\n"
                    f"Host: {host}:{port}\r\nUser-Agent: kube-apiserver-admission\r\n"
                    "Content-Type: application/json\r\nAccept: application/json, */*\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
            return await _read_response(reader, url)
    except TimeoutError:
        raise CallError(f'Post "{url}": context deadline exceeded') from None
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as e:
        # ValueError: a line longer than the reader's limit (a chunk size line)
        raise CallError(f'Post "{url}": {type(e).__name__}: {e}') from None
    finally:
        if writer is not None:
            writer.close()


async def _read_response(reader: asyncio.StreamReader, url: str) -> bytes:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise CallError(f'Post "{url}": net/http: server response headers exceeded {MAX_HEADER_BYTES} bytes') from None
    except asyncio.IncompleteReadError:
        raise CallError(f'Post "{url}": EOF') from None
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit():
        raise CallError(f'Post "{url}": net/http: malformed HTTP response {lines[0]!r}')
    code = int(status[1])
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        data = await _read_chunked(reader, url)
    elif "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit():
            raise CallError(f'Post "{url}": net/http: bad Content-Length {length!r}')
        if int(length) > MAX_RESPONSE_BYTES:
            raise CallError(f"the response body is larger than {MAX_RESPONSE_BYTES} bytes")
        data = await reader.readexactly(int(length))
    else:
        data = await reader.read(MAX_RESPONSE_BYTES + 1)
        while data and len(data) <= MAX_RESPONSE_BYTES:
            more = await reader.read(MAX_RESPONSE_BYTES + 1 - len(data))
            if not more:
                break
            data += more
        if len(data) > MAX_RESPONSE_BYTES:
            raise CallError(f"the response body is larger than {MAX_RESPONSE_BYTES} bytes")
    if code != 200:
        raise CallError(f"the server responded with the status code {code} but did not return more information")
    return data


async def _read_chunked(reader: asyncio.StreamReader, url: str) -> bytes:
    out = bytearray()
    while True:
        line = await reader.readline()
        size_text = line.split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise CallError(f'Post "{url}": net/http: malformed chunked encoding') from None
        if size == 0:
            return bytes(out)
        if len(out) + size > MAX_RESPONSE_BYTES:
            raise CallError(f"the response body is larger than {MAX_RESPONSE_BYTES} bytes")
        out += await reader.readexactly(size)
        await reader.readline()
