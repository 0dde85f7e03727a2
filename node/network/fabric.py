"""The plane's network: one L2 segment (bridge ``kpfab0`` in its own namespace ``<prefix>-fab``)
that every node's ``eth0`` is plugged into, like the switch between real machines. Each node is a
namespace with an address on that segment, a pod bridge for its podCIDR and a static route to
every other node's podCIDR: the routing a cloud's VPC or flannel's host-gw mode would do, with
nothing placed in the root namespace.

Beside the nodes, the control plane has a machine of its own on the segment (``<prefix>-cp``,
10.250.0.254, as a managed cluster's control plane sits on the VPC): the apiserver, running in
the root namespace, makes a second listening socket inside that namespace (``--bind-netns``), the
`kubernetes` Service's endpoint. It routes every node's podCIDR to that node, so a pod's
connection arrives from the pod's own address and the answer finds its way back.

State lives in the kernel only: a restarted plane calling ``create``/``add_node`` again finds the
namespaces and links it made and completes whatever is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import owner
from .iproute import NetworkError, create_netns, ip, link_names, netns_exists, netns_names
from .netns import write_sysctl_in
from .pod import POD_BRIDGE

FABRIC_BRIDGE = "kpfab0"
NODE_IFNAME = "eth0"
MAX_NODES = 253  # node i is 10.250.0.<i+1> (and 10.244.<i>.0/24): i in 0..252
CONTROL_PLANE_HOST = "cp"            # its namespace: <prefix>-cp
CONTROL_PLANE_IP = "10.250.0.254"    # the apiserver's address on the fabric (its --advertise-address)


@dataclass(frozen=True)
class NodeNet:
    name: str          # the node's network namespace
    ip: str            # its address on the fabric
    pod_cidr: str
    bridge_ip: str     # the pods' gateway


def node_ip(i: int) -> str:
    return f"10.250.0.{i + 1}"


def node_pod_cidr(i: int) -> str:
    return f"10.244.{i}.0/24"


class Fabric:
    """The network of the plane named ``prefix`` (``kp`` + 4 hex)."""

    def __init__(self, prefix: str) -> None:
        owner.check_prefix(prefix)
        self.prefix = prefix
        self.netns = f"{prefix}-fab"
        self._node_re = re.compile(re.escape(prefix) + r"-n(\d+)$")

    def node_netns(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    @property
    def control_plane_netns(self) -> str:
        return f"{self.prefix}-{CONTROL_PLANE_HOST}"

    def node(self, i: int) -> NodeNet:
        return NodeNet(self.node_netns(i), node_ip(i), node_pod_cidr(i), f"10.244.{i}.1")

    def nodes(self) -> list[int]:
        """The node indexes whose namespaces exist now."""
        return sorted(int(m.group(1)) for n in netns_names() if (m := self._node_re.match(n)))

    def create(self) -> None:
        """The fabric namespace and its bridge (kept if they exist); marks this process the
        plane's owner so that ``sweep`` leaves it alone while it lives."""
        owner.claim(self.prefix)
        create_netns(self.netns)
        if FABRIC_BRIDGE not in link_names(self.netns):
            ip(batch=[f"link add {FABRIC_BRIDGE} type bridge", f"link set {FABRIC_BRIDGE} up",
                      "link set lo up"], netns=self.netns)

    def add_node(self, i: int, routes: bool = True) -> NodeNet:
        """Node ``i``'s namespace on the fabric, with its pod bridge and routes to every other
        node's pods (and theirs to its pods). Safe to call again for an existing node.
        ``routes=False`` leaves the podCIDR routes out: a cloud's route table (``set_route``)
        programs them, as a VPC router would, once its route controller asks."""
        if not 0 <= i < MAX_NODES:
            raise ValueError(f"node index {i} is outside 0..{MAX_NODES - 1}")
        if not netns_exists(self.netns):
            raise NetworkError(f"add node {i}", f"fabric namespace {self.netns} not found",
                               "call Fabric.create() first")
        node = self.node(i)
        uplink = f"{self.prefix}n{i}"
        create_netns(node.name)
        if uplink not in link_names(self.netns):
            ip(batch=[f"link add {uplink} type veth peer name {NODE_IFNAME} netns {node.name}",
                      f"link set {uplink} master {FABRIC_BRIDGE}",
                      f"link set {uplink} up"], netns=self.netns)
        cmds = ["link set lo up",
                f"addr replace {node.ip}/16 dev {NODE_IFNAME}",
                f"link set {NODE_IFNAME} up"]
        if POD_BRIDGE not in link_names(node.name):
            # A fixed MAC: a bridge otherwise takes its lowest port's, which changes as pods come
            # and go and leaves the pods' ARP entries for their gateway stale.
            cmds.append(f"link add {POD_BRIDGE} address 02:6b:70:62:{i // 256:02x}:{i % 256:02x} "
                        "type bridge")
        cmds += [f"addr replace {node.bridge_ip}/24 dev {POD_BRIDGE}",
                 f"link set {POD_BRIDGE} up"]
        others = [j for j in self.nodes() if j != i] if routes else []
        cmds += [f"route replace {node_pod_cidr(j)} via {node_ip(j)}" for j in others]
        ip(batch=cmds, netns=node.name)
        write_sysctl_in(node.name, "net.ipv4.ip_forward", "1")
        for j in others:
            ip("route", "replace", node.pod_cidr, "via", node.ip, netns=self.node_netns(j))
        if routes and netns_exists(self.control_plane_netns):
            ip("route", "replace", node.pod_cidr, "via", node.ip, netns=self.control_plane_netns)
        return node

    def add_control_plane(self) -> str:
        """The control plane's machine on the segment (``<prefix>-cp``, CONTROL_PLANE_IP), with a
        route to every existing node's podCIDR (nodes added later add theirs). Returns its
        namespace; kept if it exists."""
        netns = self.add_host(CONTROL_PLANE_HOST, CONTROL_PLANE_IP)
        routes = [f"route replace {node_pod_cidr(j)} via {node_ip(j)}" for j in self.nodes()]
        if routes:
            ip(batch=routes, netns=netns)
        return netns

    def set_route(self, netns: str, cidr: str, via: str | None) -> None:
        """In ``netns``: ``cidr`` via the fabric address ``via``, or no route for it (None)."""
        if via is None:
            ip("route", "del", cidr, netns=netns, check=False)
        else:
            ip("route", "replace", cidr, "via", via, netns=netns)

    def add_host(self, name: str, address: str) -> str:
        """A namespace ``<prefix>-<name>`` on the fabric with ``address``/16 on its eth0 and no
        pod bridge: a machine beside the nodes (a cloud's load-balancer router, a client on the
        outside). Returns the namespace; kept if it exists."""
        netns = f"{self.prefix}-{name}"
        uplink = f"{self.prefix}{name}"[:15]  # IFNAMSIZ
        # A MAC fixed by the address: a host made again (a plane restarted) is found by the
        # neighbours that still remember it, not after their ARP entries go stale.
        octets = [int(x) for x in address.split(".")]
        mac = f"02:6b:70:68:{octets[2]:02x}:{octets[3]:02x}"
        create_netns(netns)
        if uplink not in link_names(self.netns):
            ip(batch=[f"link add {uplink} type veth peer name {NODE_IFNAME} address {mac} netns {netns}",
                      f"link set {uplink} master {FABRIC_BRIDGE}",
                      f"link set {uplink} up"], netns=self.netns)
        ip(batch=["link set lo up", f"addr replace {address}/16 dev {NODE_IFNAME}",
                  f"link set {NODE_IFNAME} up"], netns=netns)
        return netns

    def remove_node(self, i: int) -> None:
        """Node ``i``'s namespace, its pods' namespaces (``<prefix>-n<i>-*``) and the other nodes'
        routes to it. Stop the node's runtime first: pods still running keep their namespaces
        alive in the kernel, though unnamed and cut off."""
        from . import cleanup  # the package's, which knows every kind of thing made here

        for j in self.nodes():
            if j != i:
                ip("route", "del", node_pod_cidr(i), netns=self.node_netns(j), check=False)
        if netns_exists(self.control_plane_netns):
            ip("route", "del", node_pod_cidr(i), netns=self.control_plane_netns, check=False)
        cleanup(self.node_netns(i))

    def destroy(self) -> None:
        """Everything of this plane: same as ``node.network.cleanup(prefix)``."""
        from . import cleanup

        cleanup(self.prefix)
