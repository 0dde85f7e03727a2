"""The pod network plugin the runtime calls for each sandbox, in the manner of CNI's bridge +
host-local plugins: a veth pair with ``eth0`` in the pod's namespace and ``kpv<8 hex>`` on the
node's pod bridge ``kpbr0``, an address from the node's podCIDR, a default route via the bridge.

Called in-process rather than as a CNI binary: the runtime is Python already. The attach's
and detach's requests go over rtnetlink sockets of the two namespaces (rtnl.py), no ``ip``
process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from . import rtnl
from .iproute import (NETNS_DIR, NetworkError, check_name, create_netns, delete_netns, ip_json,
                      netns_exists)
from .ipam import HostLocalIpam
from .netns import write_sysctl_in

POD_BRIDGE = "kpbr0"
POD_IFNAME = "eth0"

__all__ = ["PodIP", "attach", "detach", "status", "create_netns", "delete_netns", "host_veth_name"]


@dataclass(frozen=True)
class PodIP:
    ip: str
    prefixlen: int
    gateway: str


# the node-side ends of pod veths: kpv<8 hex>
HOST_VETH_PREFIX = "kpv"


def host_veth_name(sandbox_id: str) -> str:
    """The node-side veth of a sandbox: fixed by its id, so that a detach after a runtime restart
    (or a second attach) finds it without any saved state."""
    return HOST_VETH_PREFIX + hashlib.sha256(sandbox_id.encode()).hexdigest()[:8]


def _remove_veth(pod_netns: str, node_netns: str, host: str) -> None:
    """Delete the pair from whichever end still exists; deleting one end deletes both (the
    kernel's veth delete costs ~20 ms of RCU grace period, so one request when it can). Over
    rtnetlink, as the attach: no ``ip`` process. Best effort, as ``ip link del`` unchecked was."""
    for ns, name in ((node_netns, host), (pod_netns, POD_IFNAME)):
        if not netns_exists(ns):
            continue
        try:
            with rtnl.open_in(ns) as sock:
                if sock.del_link(name):
                    return
        except (OSError, NetworkError):
            continue


def attach(pod_netns: str, node_netns: str, pod_cidr: str, state_dir: str,
           sandbox_id: str) -> PodIP:
    """Give the sandbox's namespace an address on the node's pod bridge. Both namespaces must
    exist (``create_netns`` for the pod's; the fabric made the node's). Attaching an attached
    sandbox again rebuilds its veth and keeps its address."""
    for ns, what in ((pod_netns, "pod"), (node_netns, "node")):
        if not netns_exists(check_name(ns)):
            raise NetworkError(f"attach {sandbox_id}", f"{what} network namespace {ns} not found",
                               "create the pod's with create_netns; the node's comes from "
                               "Fabric.add_node")
    ipam = HostLocalIpam(state_dir, pod_cidr)
    addr = ipam.allocate(sandbox_id)
    net = ipam.net
    host = host_veth_name(sandbox_id)
    try:
        try:
            _attach_links(pod_netns, node_netns, host, str(addr), net.prefixlen, str(ipam.gateway))
        except NetworkError as e:
            if "exists" not in e.stderr:
                raise
            _remove_veth(pod_netns, node_netns, host)  # a previous attach's pair: rebuild it
            _attach_links(pod_netns, node_netns, host, str(addr), net.prefixlen, str(ipam.gateway))
    except BaseException:
        _remove_veth(pod_netns, node_netns, host)
        ipam.release(sandbox_id)
        raise
    return PodIP(str(addr), net.prefixlen, str(ipam.gateway))


def _attach_links(pod_netns: str, node_netns: str, host: str, addr: str, prefixlen: int,
                  gateway: str) -> None:
    """The veth pair, its node end on the bridge and up, the pod end addressed and routed: what
    two ``ip -batch`` runs did (one per namespace), as rtnetlink requests from this process."""
    step = ""
    try:
        with rtnl.open_in(node_netns) as node, rtnl.open_in(pod_netns) as podns:
            pod_fd = os.open(os.path.join(NETNS_DIR, pod_netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                step = f"ip -n {node_netns}"
                node.add_veth(host, POD_IFNAME, pod_fd)
            finally:
                os.close(pod_fd)
            node.set_link(host, master=POD_BRIDGE, up=True)
            # The node may still hold the MAC of the address's previous pod (REACHABLE for ~30 s,
            # and a gratuitous ARP within locktime is ignored): forget it.
            node.forget_neighbour(POD_BRIDGE, addr)
            # A gratuitous ARP when eth0 comes up, for the other pods on the bridge: a reused
            # address has a new MAC.
            write_sysctl_in(pod_netns, f"net.ipv4.conf.{POD_IFNAME}.arp_notify", "1")
            step = f"ip -n {pod_netns}"
            podns.set_link("lo", up=True)
            podns.replace_addr(POD_IFNAME, addr, prefixlen)
            podns.set_link(POD_IFNAME, up=True)
            podns.replace_default_route(gateway, POD_IFNAME)
    except rtnl.RtnlError as e:
        raise NetworkError(f"{step} {e.what}", e.strerror, "run the same ip command by hand as "
                           "root to see the state it met") from None


def detach(pod_netns: str, node_netns: str, state_dir: str, sandbox_id: str) -> None:
    """Undo ``attach``: delete the veth pair and release the address. Idempotent: a sandbox never
    attached, or whose namespaces are gone, is fine."""
    _remove_veth(check_name(pod_netns), check_name(node_netns), host_veth_name(sandbox_id))
    HostLocalIpam(state_dir).release(sandbox_id)


def status(pod_netns: str) -> PodIP | None:
    """The address and gateway of the pod's ``eth0`` as the kernel has them now (for
    PodSandboxStatus), or None when the namespace or its eth0 is gone."""
    if not netns_exists(pod_netns):
        return None
    links = ip_json("addr", "show", netns=pod_netns)
    found = None
    for link in links:
        if link.get("ifname") != POD_IFNAME:
            continue
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                found = (a["local"], int(a["prefixlen"]))
    if found is None:
        return None
    gateway = ""
    for r in ip_json("route", "show", "default", netns=pod_netns):
        if r.get("gateway"):
            gateway = r["gateway"]
    return PodIP(found[0], found[1], gateway)
