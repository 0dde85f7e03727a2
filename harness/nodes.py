"""Real nodes for tests: node.plane's layout (fabric, node namespaces, busybox image), each node's
CRI runtime and kubelet as processes (with ``services=True`` also a kube-proxy per node and the
cluster DNS in node 0, as `make run` has them), and a teardown that removes everything the nodes made,
whatever state a test left them in; and RuntimeNode, one node with only its runtime, for the
runtime's and the kubelet's own tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from apiserver.errors import ApiError
from harness.procs import DEFAULT_READY_TIMEOUT, REPO, Registry, ServerProcess
from node import capable, network
from node.cri.client import CriClient
from node.network.fabric import Fabric
from node.plane import RealNode, RealNodes
from node import mounts
from node.runtime import cgroups
from node.runtime.cleanup import cleanup, conmon_pids
from node.runtime.images import ImageStore, build_busybox


class RuntimeProcess(ServerProcess):
    """A node's CRI runtime (python -m node.runtime) of node.plane's layout, ready once CRI
    Version answers. ``terminate()`` stops it as a supervisor does (SIGTERM to its own process
    group; the conmons run in sessions of their own, so the containers keep running)."""

    kind = "cri-runtime"

    def __init__(self, nodes: RealNodes, node: RealNode, registry: Registry | None = None,
                 ready_timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        self.nodes, self.node = nodes, node
        super().__init__(f"runtime-{node.index}", nodes.dir, registry, ready_timeout)

    @property
    def endpoint(self) -> str:
        return self.node.cri_socket

    def argv(self) -> list[str]:
        return self.nodes.runtime_command(self.node)

    def ready_probe(self, rpc_timeout: float) -> str | None:
        from node.cri.client import CriClient, CriError

        if not os.path.exists(self.node.cri_socket[len("unix://"):]):
            return "no socket yet"
        with contextlib.closing(CriClient(self.node.cri_socket, timeout=rpc_timeout)) as client:
            try:
                client.version()
            except CriError as e:
                return f"Version: {e}"
        return None


class KubeletProcess(ServerProcess):
    """A real node's kubelet (python -m node.kubelet), ready once its Node is registered;
    tests wait for the Node to be Ready through the apiserver."""

    kind = "kubelet"

    def __init__(self, nodes: RealNodes, node: RealNode, server: str, registry: Registry | None = None,
                 extra_args: tuple[str, ...] = (), ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 kubeconfig: str | None = None) -> None:
        """``kubeconfig``: the kubelet's credentials (a secure plane's node certificate), as
        $KUBECONFIG; None: none (an insecure apiserver)."""
        self.nodes, self.node, self.server, self.extra_args = nodes, node, server, extra_args
        self.kubeconfig = kubeconfig
        self.extra_env = {"KUBECONFIG": kubeconfig} if kubeconfig else {}
        super().__init__(f"kubelet-{node.index}", nodes.dir, registry, ready_timeout)

    @property
    def endpoint(self) -> str:
        return self.server

    def argv(self) -> list[str]:
        return self.nodes.kubelet_command(self.node, self.server, *self.extra_args)

    def ready_probe(self, rpc_timeout: float) -> str | None:
        from apiserver.client import Client
        from apiserver.errors import ApiError

        with Client(self.server, timeout=rpc_timeout, kubeconfig=self.kubeconfig) as client:
            try:
                client.get("nodes", self.node.name, "")
            except ApiError as e:
                return f"node {self.node.name}: {e}"
        return None


class ProxyProcess(ServerProcess):
    """A real node's kube-proxy (python -m node.proxy), ready once its first sync has made the
    table in the node's namespace."""

    kind = "kube-proxy"

    def __init__(self, nodes: RealNodes, node: RealNode, server: str, registry: Registry | None = None,
                 extra_args: tuple[str, ...] = (), ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 kubeconfig: str | None = None) -> None:
        self.nodes, self.node, self.server, self.extra_args = nodes, node, server, extra_args
        self.extra_env = {"KUBECONFIG": kubeconfig} if kubeconfig else {}
        super().__init__(f"proxy-{node.index}", nodes.dir, registry, ready_timeout)

    @property
    def endpoint(self) -> str:
        return self.server

    def argv(self) -> list[str]:
        return self.nodes.proxy_command(self.node, self.server, *self.extra_args)

    def ready_probe(self, rpc_timeout: float) -> str | None:
        from node.proxy import nft

        return None if "services" in nft.list_chains(self.node.netns) else "no services chain yet"


class DnsProcess(ServerProcess):
    """The cluster DNS (python -m node.dns) in node 0's namespace, ready once it answers there."""

    kind = "cluster-dns"

    def __init__(self, nodes: RealNodes, server: str, registry: Registry | None = None,
                 ready_timeout: float = DEFAULT_READY_TIMEOUT, kubeconfig: str | None = None) -> None:
        self.nodes, self.server = nodes, server
        self.extra_env = {"KUBECONFIG": kubeconfig} if kubeconfig else {}
        super().__init__("dns", nodes.dir, registry, ready_timeout)

    @property
    def endpoint(self) -> str:
        return f"{self.nodes.dns_listen}:53"

    def argv(self) -> list[str]:
        return self.nodes.dns_command(self.server)

    def ready_probe(self, rpc_timeout: float) -> str | None:
        return None if dns_answers(self.nodes.nodes[0].netns, self.nodes.dns_listen, rpc_timeout) \
            else "no DNS answer yet"


def dns_answers(netns: str, ip: str, timeout: float = 1.0) -> bool:
    """Whether the cluster DNS at ``ip`` answers a query sent from inside ``netns``."""
    import socket

    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    from node.network.netns import socket_in

    sock = socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)  # dnspython waits for it with its own timeout
    try:
        q = dns.message.make_query("dns-version.cluster.local", "TXT")
        return dns.query.udp(q, ip, timeout=min(timeout, 1.0), sock=sock).rcode() == dns.rcode.NOERROR
    except (OSError, dns.exception.Timeout):
        return False
    finally:
        sock.close()


class Nodes:
    """Started real nodes: ``.layout`` (RealNodes), ``.runtimes``, ``.kubelets`` and ``.proxies``
    by index, ``.dns`` (None without services)."""

    def __init__(self, layout: RealNodes, runtimes: list[RuntimeProcess], kubelets: list[KubeletProcess],
                 proxies: list[ProxyProcess] | None = None, dns: DnsProcess | None = None):
        self.layout, self.runtimes, self.kubelets = layout, runtimes, kubelets
        self.proxies, self.dns = proxies or [], dns

    @property
    def prefix(self) -> str:
        return self.layout.prefix


@contextlib.contextmanager
def real_nodes(tmp_path, server: str, count: int = 1, kubelet_args: tuple[str, ...] = (),
               services: bool = False, proxy_args: tuple[str, ...] = (), kubeconfig=None):
    """``count`` real nodes whose kubelets talk to the apiserver at ``server``; everything they
    made is removed on exit (pass or fail), and what could not be is an error.

    ``services``: also a kube-proxy per node and the cluster DNS in node 0, pods' resolv.conf
    naming the kube-dns clusterIP (10.96.0.10) as in Kubernetes. Without (the default, for tests
    that need no Service: a proxy and the DNS cost a few seconds of start-up), nothing routes a
    clusterIP and pods' resolv.conf names node 0's address, where a test may start the DNS.

    ``kubeconfig``: identity -> the path of a kubeconfig for it, asked for "node-<node name>" (each
    kubelet), "kube-proxy" and "dns" (a secure plane: ``lambda who: api.kubeconfig(tmp / who, who)``);
    None: every component without credentials.

    For pods to reach the apiserver (the `kubernetes` Service), start it with
    ``control_plane_flags(tmp_path)``: the same ``tmp_path`` gives the same plane prefix."""
    layout = RealNodes(Path(tmp_path), count, proxies=services)
    reg = Registry()
    runtimes: list[RuntimeProcess] = []
    kubelets: list[KubeletProcess] = []
    proxies: list[ProxyProcess] = []
    dns: DnsProcess | None = None
    try:
        layout.prepare()
        runtimes = [RuntimeProcess(layout, n, reg) for n in layout.nodes]
        if services:  # they need only the apiserver: start them while the runtimes start
            proxies = [ProxyProcess(layout, n, server, reg, proxy_args,
                                    kubeconfig=kubeconfig("kube-proxy") if kubeconfig else None)
                       for n in layout.nodes]
            dns = DnsProcess(layout, server, reg, kubeconfig=kubeconfig("dns") if kubeconfig else None)
        started = [*runtimes, *proxies, *([dns] if dns else [])]
        for proc in started:
            proc.launch()
        for proc in started:
            proc.wait_ready()
        kubelets = [KubeletProcess(layout, n, server, reg, kubelet_args,
                                   kubeconfig=kubeconfig(f"node-{n.name}") if kubeconfig else None)
                    for n in layout.nodes]
        for kubelet in kubelets:
            kubelet.launch()
        for kubelet in kubelets:
            kubelet.wait_ready()
        yield Nodes(layout, runtimes, kubelets, proxies, dns)
    finally:
        reg.cleanup()
        problems = layout.teardown()
        if problems:
            raise RuntimeError(f"real nodes of {layout.prefix} left behind: {problems}")


def running_pod(client, name: str, namespace: str):
    """The pod if its first container is running now, else None (a get that fails: None)."""
    try:
        pod = client.get("pods", name, namespace)
    except ApiError:
        return None
    cs = pod.status.container_statuses
    return pod if cs and cs[0].state.HasField("running") else None


def control_plane_flags(tmp_path) -> dict[str, str]:
    """The apiserver's flags (harness spelling) for the real nodes ``real_nodes(tmp_path, ...)``
    will make: it listens on the control plane's fabric address inside the plane's control-plane
    namespace (once made) and the `kubernetes` Service leads there, so pods reach it."""
    flags = RealNodes(Path(tmp_path), 0).apiserver_flags()
    return {flag[2:].replace("-", "_"): value for flag, value in zip(flags[::2], flags[1::2])}


def need_runtime():
    """Skip the calling test when this machine cannot run real nodes (and say why)."""
    import pytest

    reason = capable.why_not()
    if reason:
        pytest.skip(f"real nodes cannot run here: {reason}")


class RuntimeNode:
    """One node for runtime and kubelet tests: its netns on a fresh fabric, an image store with
    busybox, the runtime process (``start``/``stop``), and ``teardown`` removing all of it."""

    def __init__(self, base):
        self.plane = network.new_prefix()
        self.fabric = Fabric(self.plane)
        self.fabric.create()
        self.net = self.fabric.add_node(0)
        self.prefix = self.net.name  # <plane>-n0
        self.base = str(base)
        self.root = os.path.join(self.base, "root")
        self.images = os.path.join(self.base, "images")
        build_busybox(ImageStore(self.images))
        self.sock = os.path.join(self.base, "cri.sock")
        self.proc: subprocess.Popen | None = None
        self.client: CriClient | None = None

    def start(self) -> CriClient:
        log = open(os.path.join(self.base, "runtime.log"), "ab")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.runtime", "--listen", f"unix://{self.sock}", "--root", self.root,
             "--prefix", self.prefix, "--node-netns", self.net.name, "--image-store", self.images],
            stdout=log, stderr=log, env=env, cwd=REPO)
        log.close()
        if self.client is None:
            self.client = CriClient(f"unix://{self.sock}", timeout=60)
        self.client.wait_ready(20)
        return self.client

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def teardown(self) -> list[str]:
        self.stop()
        if self.client is not None:
            self.client.close()
        problems = cleanup(self.prefix, self.root)
        self.fabric.destroy()
        return problems


def leftovers(n: RuntimeNode) -> dict:
    """Anything on the machine still named with the node's prefix."""
    out = {}
    netns = [x for x in os.listdir("/run/netns") if x.startswith(n.prefix + "-")] \
        if os.path.isdir("/run/netns") else []  # pods' (the node's own is the fabric's)
    if netns:
        out["netns"] = netns
    if cgroups.tree(n.prefix):
        out["cgroups"] = cgroups.tree(n.prefix)
    if mounts.mounts_under(n.root):
        out["mounts"] = mounts.mounts_under(n.root)
    if conmon_pids(f"/run/{n.prefix}"):
        out["conmon"] = conmon_pids(f"/run/{n.prefix}")
    if os.path.exists(f"/run/{n.prefix}"):
        out["runc root"] = f"/run/{n.prefix}"
    if os.path.exists(f"/run/{n.prefix}.runtime-root"):
        out["root marker"] = f"/run/{n.prefix}.runtime-root"
    if mounts.mounts_under(n.base):
        out["mounts under the test dir"] = mounts.mounts_under(n.base)
    return out
