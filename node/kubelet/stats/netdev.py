"""Interface counters of a network namespace (its /proc/net/dev), as cAdvisor reads a
container's network: the loopback and the host ends of veth pairs (cAdvisor's `veth`, the
plane's pod veths `kpv`) are left out."""

from __future__ import annotations

from dataclasses import dataclass

from node.network.netns import run_in
from node.network.pod import HOST_VETH_PREFIX

IGNORED_PREFIXES = ("lo", "veth", HOST_VETH_PREFIX)
DEFAULT_INTERFACE = "eth0"  # upstream's: the Summary's inline interface


@dataclass(frozen=True)
class Interface:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def parse(text: str) -> list[Interface]:
    out = []
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        fields = rest.split()
        if len(fields) < 16 or name.startswith(IGNORED_PREFIXES):
            continue
        rx, tx = fields[:8], fields[8:16]
        out.append(Interface(name, int(rx[0]), int(rx[2]), int(tx[0]), int(tx[2])))
    return out


def _read() -> str:
    # the thread's own namespace (run_in's thread has entered it); /proc/self is the process's
    with open("/proc/thread-self/net/dev") as f:
        return f.read()


def interfaces(netns: str) -> list[Interface]:
    """The namespace's interfaces (``netns``: a name ip-netns knows, or a path such as
    /proc/PID/ns/net; "" the kubelet's own). Raises OSError (NetworkError) when it is gone."""
    return parse(run_in(netns, _read) if netns else _read())
