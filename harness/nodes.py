"""Real nodes for tests: node.plane's layout (fabric, node namespaces, busybox image), each node's
CRI runtime and kubelet as processes, and a teardown that removes everything the nodes made,
whatever state a test left them in."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from harness.procs import DEFAULT_READY_TIMEOUT, Registry, ServerProcess
from node.plane import RealNode, RealNodes


class RuntimeProcess(ServerProcess):
    """A node's CRI runtime (python -m node.runtime), ready once CRI Version answers."""

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

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, as a supervisor stops it: the containers keep running."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class KubeletProcess(ServerProcess):
    """A real node's kubelet (python -m node.kubelet), ready once it runs; tests wait for the
    Node to be Ready through the apiserver."""

    kind = "kubelet"

    def __init__(self, nodes: RealNodes, node: RealNode, server: str, registry: Registry | None = None,
                 extra_args: tuple[str, ...] = (), ready_timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        self.nodes, self.node, self.server, self.extra_args = nodes, node, server, extra_args
        super().__init__(f"kubelet-{node.index}", nodes.dir, registry, ready_timeout)

    @property
    def endpoint(self) -> str:
        return self.server

    def argv(self) -> list[str]:
        return self.nodes.kubelet_command(self.node, self.server, *self.extra_args)

    def ready_probe(self, rpc_timeout: float) -> str | None:
        return None


class Nodes:
    """Started real nodes: ``.layout`` (RealNodes), ``.runtimes`` and ``.kubelets`` by index."""

    def __init__(self, layout: RealNodes, runtimes: list[RuntimeProcess], kubelets: list[KubeletProcess]):
        self.layout, self.runtimes, self.kubelets = layout, runtimes, kubelets

    @property
    def prefix(self) -> str:
        return self.layout.prefix


@contextlib.contextmanager
def real_nodes(tmp_path, server: str, count: int = 1, kubelet_args: tuple[str, ...] = ()):
    """``count`` real nodes whose kubelets talk to the apiserver at ``server``; everything they
    made is removed on exit (pass or fail), and what could not be is an error."""
    layout = RealNodes(Path(tmp_path), count)
    reg = Registry()
    runtimes: list[RuntimeProcess] = []
    kubelets: list[KubeletProcess] = []
    try:
        layout.prepare()
        runtimes = [RuntimeProcess(layout, n, reg).start() for n in layout.nodes]
        kubelets = [KubeletProcess(layout, n, server, reg, kubelet_args).start() for n in layout.nodes]
        yield Nodes(layout, runtimes, kubelets)
    finally:
        reg.cleanup()
        problems = layout.teardown()
        if problems:
            raise RuntimeError(f"real nodes of {layout.prefix} left behind: {problems}")
