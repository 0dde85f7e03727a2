"""HTTP/2 flow control: one window, the same class for what we send and what we receive.

A window counts the bytes its sender may still send on a stream or on the
connection. For what we send, the peer's WINDOW_UPDATEs grow it and its
SETTINGS_INITIAL_WINDOW_SIZE moves every stream's window by the change. For
what we receive, the bytes that arrive shrink it (more than it allows is the
peer's FLOW_CONTROL_ERROR), and it is given back as we release them: once
half of the window is released and unacknowledged, in one WINDOW_UPDATE.
What is received but not released is what the peer makes us hold, so the
window bounds it: the connection releases a request's bytes once the call
has taken them (a unary call at once, a streaming call as its handler reads),
a stream releases what is not yet a whole message at once (a message may be
larger than the stream's window) and a whole message when the handler takes it.

The server's hot paths read and write `available` directly (a slot, no call),
and a stream makes its windows only when it needs them (Stream.own_send_window,
Connection.on_data): a unary call, answered in one go, makes none.
"""

from __future__ import annotations

from grpclite.wire import MAX_WINDOW

# what we let a client send before it hears from us: a stream may send a
# whole 1.5 MiB put without waiting; the connection carries several
STREAM_RECV_WINDOW = 4 << 20
CONN_RECV_WINDOW = 64 << 20


class Window:
    """A flow-control window of `size` bytes, `available` of them not yet used; a window we receive
    on also counts what was released since the last WINDOW_UPDATE (`unacked`)."""

    __slots__ = ("available", "half", "size", "unacked")

    def __init__(self, size: int) -> None:
        self.size = self.available = size
        self.half = size // 2  # receiving: credit goes back once this much is unacknowledged
        self.unacked = 0

    # --- a window we send on (the peer's) -------------------------------------------

    def grow(self, increment: int) -> bool:
        """A WINDOW_UPDATE; False if the window is now past the largest HTTP/2 allows
        (what that means is the caller's: a connection error for the connection's window)."""
        self.available += increment
        return self.available <= MAX_WINDOW

    def resize(self, size: int) -> None:
        """SETTINGS_INITIAL_WINDOW_SIZE changed: the window moves by the difference."""
        self.available += size - self.size
        self.size = size
        self.half = size // 2

    # --- a window we receive on (ours) ----------------------------------------------

    def held(self) -> int:
        """Bytes received and not yet released."""
        return self.size - self.available - self.unacked

    def release(self, n: int) -> int:
        """n received bytes released: the WINDOW_UPDATE increment to send now
        (everything unacknowledged, once that is half the window or more), else 0."""
        unacked = self.unacked + n
        if unacked < self.half:
            self.unacked = unacked
            return 0
        self.unacked = 0
        self.available += unacked
        return unacked

    def consume(self, n: int) -> int:
        """n bytes received and released at once (release's answer)."""
        self.available -= n
        return self.release(n)
