"""HTTP/2 flow control: one window, the same class for what we send and what we receive.

A window counts the bytes its sender may still send on a stream or on the
connection. For what we send, the peer's WINDOW_UPDATEs grow it and its
SETTINGS_INITIAL_WINDOW_SIZE moves every stream's window by the change. For
what we receive, the bytes we consume shrink it, and the credit goes back to
the peer in one WINDOW_UPDATE once half of the window is unacknowledged.

What a peer sends is not checked against our receive windows (the peer keeps
within them; a peer that does not is not stopped yet): enforcing it is
`n > window.available` in consume(), a FLOW_CONTROL_ERROR.

The server's hot paths read and write `available` directly (a slot, no call),
and a stream makes its windows only when it needs them (Stream.own_send_window,
Connection.credit): a unary call, answered in one go, makes none.
"""

from __future__ import annotations

from grpclite.wire import MAX_WINDOW

# what we let a client send before it hears from us: a stream may send a
# whole 1.5 MiB put without waiting; the connection carries several
STREAM_RECV_WINDOW = 4 << 20
CONN_RECV_WINDOW = 64 << 20


class Window:
    """A flow-control window of `size` bytes, `available` of them not yet used."""

    __slots__ = ("available", "refill_at", "size")

    def __init__(self, size: int) -> None:
        self.size = self.available = size
        self.refill_at = size - size // 2  # receiving: credit goes back at or below this

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
        self.refill_at = size - size // 2

    # --- a window we receive on (ours) ----------------------------------------------

    def consume(self, n: int) -> int:
        """n bytes received and consumed: the WINDOW_UPDATE increment to send now
        (everything unacknowledged, once that is half the window or more), else 0."""
        available = self.available - n
        if available > self.refill_at:
            self.available = available
            return 0
        self.available = self.size
        return self.size - available
