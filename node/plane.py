"""Real nodes on this machine: the fabric, and for each node a network namespace, a CRI runtime,
a kubelet and a kube-proxy; plus the cluster DNS, in node 0's namespace. As in Kubernetes, pods'
resolv.conf names the kube-dns Service's clusterIP (10.96.0.10), which every node's kube-proxy
routes to the DNS server (``proxies=False``: nodes without kube-proxy, pods naming the server's
own address instead).

`RealNodes(data_dir, count)` lays the nodes out (node i: netns ``<prefix>-n<i>``, address
10.250.0.<i+1>, podCIDR 10.244.<i>.0/24, its runtime's socket and state under
``<data_dir>/nodes/n<i>``), makes the network (`prepare`) and the busybox image, and gives the
command lines of each node's runtime, kubelet and kube-proxy for a supervisor to run (`commands`). `teardown`
removes everything the nodes made: containers, mounts, cgroups, namespaces.

The control plane has a host on the fabric too (``<prefix>-cp``, 10.250.0.254): the apiserver, given
`apiserver_flags`, listens there as well, and the `kubernetes` Service (10.96.0.1:443) leads pods to
it, as in Kubernetes.

The prefix (``kp`` + 4 hex) is kept in ``<data_dir>/nodes/prefix``, so a plane restarted on the same
data directory finds its namespaces and adopts its running containers instead of making new ones.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from node import network
from node.network.fabric import CONTROL_PLANE_IP, Fabric

NODE_NAME = "node-{i}"
CLUSTER_CIDR = "10.244.0.0/16"  # every node's podCIDR is a /24 of it
CLUSTER_DOMAIN = "cluster.local"
KUBE_DNS_IP = "10.96.0.10"  # the kube-dns Service's clusterIP, as in Kubernetes (node.dns makes it)


def busybox_version() -> str | None:
    """major.minor of the machine's busybox ("1.35"), the tag its image gets beside latest."""
    try:
        banner = subprocess.run(["busybox"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"BusyBox v(\d+\.\d+)", banner)
    return found.group(1) if found else None


@dataclass(frozen=True)
class RealNode:
    index: int
    name: str  # the Node object's name
    prefix: str  # the runtime's prefix: its netns, pod netns, cgroups and runc state
    netns: str
    ip: str
    pod_cidr: str
    dir: Path  # the runtime's and the kubelet's state

    @property
    def cri_socket(self) -> str:
        return f"unix://{self.dir / 'cri.sock'}"


class RealNodes:
    def __init__(self, data_dir: str | os.PathLike, count: int, prefix: str | None = None,
                 proxies: bool = True) -> None:
        self.proxies = proxies  # whether kube-proxy runs on the nodes (then pods ask the kube-dns clusterIP)
        self.dir = Path(data_dir).resolve() / "nodes"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix or self._stored_prefix()
        self.fabric = Fabric(self.prefix)
        self.images = self.dir / "images"
        self.nodes = [self._layout(i) for i in range(count)]

    def _stored_prefix(self) -> str:
        path = self.dir / "prefix"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            prefix = network.new_prefix()
            path.write_text(prefix + "\n")
            return prefix

    def layout(self, i: int) -> RealNode:
        """Node ``i``'s names, addresses and directory (whether it exists or not)."""
        return self._layout(i)

    def _layout(self, i: int) -> RealNode:
        net = self.fabric.node(i)
        return RealNode(index=i, name=NODE_NAME.format(i=i), prefix=net.name, netns=net.name, ip=net.ip,
                        pod_cidr=net.pod_cidr, dir=self.dir / f"n{i}")

    def apiserver_flags(self) -> list[str]:
        """What the apiserver needs to be reachable from pods: it listens on the control plane's
        fabric address inside the control-plane namespace (made by `prepare`, possibly after the
        apiserver starts: it waits for it), and names that address in the `kubernetes` Service's
        endpoints."""
        return ["--advertise-address", CONTROL_PLANE_IP, "--bind-netns", self.fabric.control_plane_netns]

    def prepare(self) -> None:
        """The fabric, the control plane's host on it, each node's namespace, and the busybox image
        in the shared store."""
        self.fabric.create()
        self.fabric.add_control_plane()
        for node in self.nodes:
            self.add_node(node)
        self.prepare_images()

    def add_node(self, node: RealNode, routes: bool = True) -> None:
        """One node's namespace on the fabric (which must exist) and its directory: what a node
        added later needs, e.g. a cloud instance (``routes=False``: the cloud routes podCIDRs)."""
        self.fabric.add_node(node.index, routes=routes)
        node.dir.mkdir(parents=True, exist_ok=True)

    def remove_node(self, node: RealNode) -> list[str]:
        """Everything of one node whose processes are stopped: its containers, mounts, cgroups,
        pod namespaces, its namespace and the other nodes' routes to it. Returns what could not
        be removed."""
        from node.kubelet.volumes import cleanup as volumes_cleanup
        from node.runtime.cleanup import cleanup as runtime_cleanup

        problems = runtime_cleanup(node.prefix, str(node.dir / "runtime"))
        volumes_cleanup(str(node.dir / "kubelet"))
        self.fabric.remove_node(node.index)
        return problems

    def prepare_images(self) -> None:
        """The busybox image in the shared store (kept if there)."""
        from node.runtime.images import ImageStore, build_busybox

        store = ImageStore(str(self.images))
        image = build_busybox(store)
        version = busybox_version()
        if version:  # a second name, so the example can roll out from one image name to another
            store.tag(image, f"docker.io/library/busybox:{version}")

    def runtime_command(self, node: RealNode) -> list[str]:
        return [sys.executable, "-m", "node.runtime", "--listen", node.cri_socket, "--root", str(node.dir / "runtime"),
                "--prefix", node.prefix, "--node-netns", node.netns, "--image-store", str(self.images),
                "--log-level", "warning"]

    def kubelet_command(self, node: RealNode, server: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "node.kubelet", "--server", server, "--node-name", node.name,
                "--container-runtime-endpoint", node.cri_socket, "--root-dir", str(node.dir / "kubelet"),
                "--node-ip", node.ip, "--pod-cidr", node.pod_cidr, "--node-netns", node.netns,
                "--cluster-dns", self.cluster_dns, "--cluster-domain", CLUSTER_DOMAIN,
                "--log-level", "warning", *extra]

    def proxy_command(self, node: RealNode, server: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "node.proxy", "--server", server, "--node-name", node.name,
                "--node-netns", node.netns, "--node-ip", node.ip, "--cluster-cidr", CLUSTER_CIDR,
                "--log-level", "warning", *extra]

    @property
    def dns_listen(self) -> str:
        """Where the cluster DNS answers: node 0's address, in that node's namespace (the kube-dns
        Service's Endpoints)."""
        return self.nodes[0].ip if self.nodes else ""

    @property
    def cluster_dns(self) -> str:
        """Where pods send DNS queries (the kubelets' --cluster-dns): as in Kubernetes, the kube-dns
        Service's clusterIP, which each node's kube-proxy routes to the server; on nodes without
        kube-proxy nothing routes a clusterIP, so the server's own address."""
        if not self.nodes:
            return ""
        return KUBE_DNS_IP if self.proxies else self.dns_listen

    def dns_command(self, server: str) -> list[str]:
        return [sys.executable, "-m", "node.dns", "--server", server, "--listen", f"{self.dns_listen}:53",
                "--netns", self.nodes[0].netns, "--cluster-domain", CLUSTER_DOMAIN, "--log-level", "warning"]

    def commands(self, server: str) -> dict[str, list[str]]:
        """Each node's runtime, then its kubelet (which waits for its runtime's socket) and its
        kube-proxy (whose rules live in the node's namespace: they go with it)."""
        cmds: dict[str, list[str]] = {}
        for node in self.nodes:
            cmds[f"runtime-{node.index}"] = self.runtime_command(node)
        for node in self.nodes:
            cmds[f"kubelet-{node.index}"] = self.kubelet_command(node, server)
        if self.proxies:
            for node in self.nodes:
                cmds[f"proxy-{node.index}"] = self.proxy_command(node, server)
        if self.nodes:
            cmds["dns"] = self.dns_command(server)
        return cmds

    def teardown(self) -> list[str]:
        """Remove every container, mount, cgroup and namespace the nodes made; returns what
        could not be removed (empty when all went)."""
        from node.kubelet.volumes import cleanup as volumes_cleanup
        from node.runtime.cleanup import cleanup as runtime_cleanup

        problems: list[str] = []
        for node in self.nodes:
            problems += runtime_cleanup(node.prefix, str(node.dir / "runtime"))
            volumes_cleanup(str(node.dir / "kubelet"))  # what pods left mounted (tmpfs, subPaths)
        self.fabric.destroy()
        network.cleanup(self.prefix)
        return problems
