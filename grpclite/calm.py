"""How often a client may ask the connection for work that is not a call: PINGs and stream resets.

A PING costs an answer and a reset stream a call started for nothing, both
without holding a stream; a client that sends them by the thousand a second
(a PING flood, HTTP/2 rapid reset, CVE-2023-44487) gets GOAWAY
ENHANCE_YOUR_CALM, as grpc-go's keepalive enforcement ("too_many_pings") and
nghttp2's rapid-reset mitigation answer. A token bucket: a burst at once,
then a steady pace; ordinary clients (keepalive and BDP pings, cancelled
calls) stay far below both.
"""

from __future__ import annotations

import time

# PINGs: grpc-go clients ping for keepalive (every 10 s at the most often) and to size their windows
# (once per round trip while a response streams in: refilled by what we send, Stream._send_data)
PING_BURST = 1000
PINGS_PER_SECOND = 100
# streams the client resets while we still serve them (nghttp2: 1000 at once, 33 a second)
RESET_BURST = 1000
RESETS_PER_SECOND = 100


class Rate:
    """At most `burst` events at once, and `per_second` on average after that."""

    __slots__ = ("burst", "last", "per_second", "tokens")

    def __init__(self, burst: int, per_second: float) -> None:
        self.burst = self.tokens = burst
        self.per_second = per_second
        self.last = time.monotonic()

    def spend(self) -> bool:
        """One event; False once the client is past its rate."""
        if self.tokens:
            self.tokens -= 1
            return True
        now = time.monotonic()  # refilled only when empty: no clock read for most events
        earned = int((now - self.last) * self.per_second)
        if not earned:
            return False
        self.tokens = min(self.burst, earned) - 1
        self.last = now
        return True

    def refill(self) -> None:
        self.tokens = self.burst
