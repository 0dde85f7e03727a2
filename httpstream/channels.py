"""The channel.k8s.io subprotocols of exec and attach on a WebSocket, the server's side.

Each binary message's first byte is its channel: 0 stdin (client to server), 1 stdout,
2 stderr, 3 the error channel (server to client: the outcome as a meta/v1 Status, JSON, from
v4 on), 4 resize (client to server: {"Width": w, "Height": h} from v4 on). v5 adds the close
signal: a message [255, n] says the sender will write no more on channel n, so stdin can end
while stdout goes on (kubectl 1.32 offers only v5.channel.k8s.io; v4 stays for older clients,
whose stdin ends with the connection). The server ends a session by writing the Status and
closing the WebSocket: client-go's readers see EOF and ``kubectl exec`` exits with the code the
Status carries (reason NonZeroExitCode, cause ExitCode).

Only the binary v4/v5 protocols are served (client-go's websocket executor speaks no other).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from httpstream.websocket import BINARY, GOING_AWAY, WebSocket

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
PROTOCOLS = [V5, V4]
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
# what one stdout/stderr message carries at most (client-go reads with a 32 KiB buffer)
CHUNK = 32 * 1024


@dataclass(frozen=True)
class Size:
    width: int
    height: int


def parse_resize(data: bytes) -> Size | None:
    """A resize message's size; None when it is not one (ignored, as the kubelet logs and
    drops a malformed one)."""
    try:
        obj = json.loads(data)
        w, h = int(obj.get("Width", 0)), int(obj.get("Height", 0))
    except (ValueError, TypeError, AttributeError):
        return None
    if not (0 < w <= 10_000 and 0 < h <= 10_000):
        return None
    return Size(w, h)


def success() -> dict:
    return {"metadata": {}, "status": "Success"}


def exit_status(code: int, command: list[str]) -> dict:
    """The Status of a command that exited non-zero, in the words of the kubelet's streaming
    server with containerd ("command terminated with non-zero exit code: ...")."""
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command "
                       f"[{' '.join(command)}], exit code {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def internal_error(message: str) -> dict:
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",
            "reason": "InternalError", "details": {"causes": [{"message": message}]}, "code": 500}


class ChannelSession:
    """A remotecommand session on an accepted WebSocket (``ws.subprotocol`` is V4 or V5)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.v5 = ws.subprotocol == V5

    async def write(self, channel: int, data: bytes) -> None:
        for i in range(0, len(data), CHUNK):
            await self.ws.send(bytes([channel]) + data[i:i + CHUNK], BINARY)

    async def read_input(self, on_stdin: Callable[[bytes], Awaitable[None]],
                         on_stdin_end: Callable[[], Awaitable[None]],
                         on_resize: Callable[[Size], Awaitable[None]],
                         idle_timeout: float | None = None) -> None:
        """Dispatch what the client sends until it closes: stdin data, the end of stdin (v5's
        close signal; for v4, the connection's end), resizes. Messages on other channels are
        dropped, as client-go drops those of unknown streams. ``idle_timeout``: a client that
        sends nothing at all (not even the pings kubectl sends every 5 s) for this long is
        taken as gone, as the kubelet's streaming-connection-idle-timeout does."""
        watchdog = asyncio.ensure_future(self._watch_idle(idle_timeout)) if idle_timeout else None
        try:
            await self._dispatch(on_stdin, on_stdin_end, on_resize)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    async def _watch_idle(self, idle_timeout: float) -> None:
        """Ends the connection once no frame (data or control) came for ``idle_timeout``."""
        while True:
            left = self.ws.last_seen + idle_timeout - time.monotonic()
            if left <= 0:
                await self.ws.close(GOING_AWAY, "idle")
                self.ws.writer.close()
                return
            await asyncio.sleep(min(left, 60.0))

    async def _dispatch(self, on_stdin, on_stdin_end, on_resize) -> None:
        ended = False
        while True:
            msg = await self.ws.recv()
            if msg is None:
                break
            _, data = msg
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel == STDIN and not ended:
                if payload:
                    await on_stdin(payload)
            elif channel == RESIZE:
                size = parse_resize(payload)
                if size is not None:
                    await on_resize(size)
            elif channel == CLOSE and self.v5 and payload[:1] == bytes([STDIN]) and not ended:
                ended = True
                await on_stdin_end()
        if not ended:
            await on_stdin_end()

    async def finish(self, status: dict) -> None:
        """Write the outcome on the error channel and close the WebSocket."""
        try:
            await self.write(ERROR, json.dumps(status, separators=(",", ":")).encode())
        except ConnectionError:
            pass
        await self.ws.shutdown()
