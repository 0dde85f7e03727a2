"""The two ranges Services draw from: ClusterIPs (``--service-cluster-ip-range``)
and NodePorts (``--service-node-port-range``), with kube-apiserver's rules and
messages.

Both split their range as Kubernetes does (KEP-3070 for IPs, KEP-3668 for
ports): a lower band that dynamic allocation uses only once the upper band is
full, so a user who picks a static address or port from the lower band rarely
collides with one handed out at random. Within a band the search starts at a
random offset and walks forward, as the upstream bitmap allocator does.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Container
from dataclasses import dataclass

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_NODE_PORT_RANGE = "30000-32767"


class RangeError(Exception):
    """A value outside the range, taken, or no value left: the message is
    upstream's ("provided IP is already allocated", ...)."""


def _band(size: int, divisor: int, lo: int, hi: int) -> int:
    """How many values at the bottom of a range of ``size`` are kept for
    static picks (none in a range smaller than ``lo``)."""
    if size < lo:
        return 0
    return min(max(lo, size // divisor), hi)


def _pick(size: int, reserved: int, taken: Callable[[int], bool], rng: random.Random) -> int | None:
    """A free offset in [0, size): first in the upper band [reserved, size), then the lower."""
    for start, end in ((reserved, size), (0, reserved)):
        span = end - start
        if span <= 0:
            continue
        first = rng.randrange(span)
        for i in range(span):
            offset = start + (first + i) % span
            if not taken(offset):
                return offset
    return None


@dataclass(frozen=True)
class ServiceCIDR:
    """An IPv4 range of Service IPs; the network and broadcast addresses are never handed out."""
    network: ipaddress.IPv4Network

    @classmethod
    def parse(cls, text: str) -> ServiceCIDR:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a CIDR (e.g. {DEFAULT_SERVICE_CIDR})") from None
        if net.version != 4:
            raise ValueError(f"{text}: only IPv4 Service ranges are served (single-stack IPv4)")
        if net.num_addresses < 8:
            raise ValueError(f"{text}: the range is too small (at least a /29)")
        if net.prefixlen < 12:
            # upstream's bitmap limit is /12 for IPv4 as well (20 bits)
            raise ValueError(f"{text}: the range is too large (at most a /12)")
        return cls(net)

    def __str__(self) -> str:
        return str(self.network)

    @property
    def size(self) -> int:
        return self.network.num_addresses - 2

    def first(self) -> str:
        """The address the ``kubernetes`` Service gets."""
        return str(self.network.network_address + 1)

    def contains(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return (addr.version == 4 and addr in self.network
                and addr not in (self.network.network_address, self.network.broadcast_address))

    def check(self, ip: str) -> None:
        if not self.contains(ip):
            raise RangeError(f"the provided IP ({ip}) is not in the valid range. "
                             f"The range of valid IPs is {self.network}")

    def pick(self, taken: Container[str], rng: random.Random | None = None) -> str:
        """A free address (not in ``taken``); RangeError "range is full" when none is left."""
        base = int(self.network.network_address) + 1
        reserved = _band(self.size, 16, 16, 256)
        offset = _pick(self.size, reserved,
                       lambda o: str(ipaddress.IPv4Address(base + o)) in taken, rng or random)
        if offset is None:
            raise RangeError("range is full")
        return str(ipaddress.IPv4Address(base + offset))


@dataclass(frozen=True)
class PortRange:
    base: int
    size: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """"30000-32767" or "30000+2767" (base and how many more), as net.ParsePortRange."""
        text = text.strip()
        try:
            if "+" in text:
                lo, _, extra = text.partition("+")
                low, high = int(lo), int(lo) + int(extra)
            elif "-" in text:
                lo, _, hi = text.partition("-")
                low, high = int(lo), int(hi)
            else:
                low = high = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a port range (e.g. {DEFAULT_NODE_PORT_RANGE})") from None
        if not 0 < low <= high <= 65535:
            raise ValueError(f"{text!r}: want LOW-HIGH within 1-65535, LOW <= HIGH")
        return cls(low, high - low + 1)

    def __str__(self) -> str:
        return f"{self.base}-{self.base + self.size - 1}"

    def contains(self, port: int) -> bool:
        return self.base <= port < self.base + self.size

    def check(self, port: int) -> None:
        if not self.contains(port):
            raise RangeError(f"provided port is not in the valid range. The range of valid ports is {self}")

    def pick(self, taken: Container[int], rng: random.Random | None = None) -> int:
        reserved = _band(self.size, 32, 16, 128)
        offset = _pick(self.size, reserved, lambda o: self.base + o in taken, rng or random)
        if offset is None:
            raise RangeError("range is full")
        return self.base + offset
