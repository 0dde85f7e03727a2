"""Container lifecycle hooks: postStart after a start, preStop before a stop.

As Kubernetes' lifecycle handler runner (pkg/kubelet/lifecycle/handlers.go):
an exec hook runs through CRI ExecSync, an httpGet or tcpSocket hook through
the same connector as probes (into the node's netns). A hook fails on a
non-zero exit, an HTTP status outside [200, 400), or a refused connection.
preStop may use the container's whole grace period; what it used is taken
from the time left before SIGKILL (at least 2 s always remain).
"""

from __future__ import annotations

import time

from apiserver.pb import core_pb2
from node.kubelet.probes import (FAILURE, Connect, ExecSync, ProbeError, default_connect, exec_probe,
                                 http_probe, resolve_port, tcp_probe)


class HookRunner:
    def __init__(self, exec_sync: ExecSync | None = None, connect: Connect = default_connect,
                 clock=time.monotonic) -> None:
        self.exec_sync, self.connect, self.clock = exec_sync, connect, clock

    def run(self, handler: core_pb2.LifecycleHandler, pod: core_pb2.Pod, container: core_pb2.Container,
            container_id: str, pod_ip: str, timeout: float) -> str:
        """"" when the hook succeeded, else Kubernetes' message of its failure."""
        where = f'for Container "{container.name}" in Pod "{pod.metadata.name}_{pod.metadata.namespace}({pod.metadata.uid})"'
        try:
            if handler.HasField("exec"):
                if self.exec_sync is None:
                    raise ProbeError("no ExecSync was given to run exec hooks")
                result, output = exec_probe(self.exec_sync, container_id, list(handler.exec.command), timeout)
                if result == FAILURE:
                    return f"Exec lifecycle hook ({list(handler.exec.command)}) {where} failed - error: {output}"
                return ""
            if handler.HasField("http_get"):
                g = handler.http_get
                result, output = http_probe(self.connect, g.host or pod_ip, resolve_port(g.port, container),
                                            g.path or "/", timeout, scheme=g.scheme or "HTTP")
                if result == FAILURE:
                    return f"HTTP lifecycle hook ({g.path or '/'}) {where} failed - error: {output}"
                return ""
            if handler.HasField("tcp_socket"):
                t = handler.tcp_socket
                result, output = tcp_probe(self.connect, t.host or pod_ip, resolve_port(t.port, container), timeout)
                return f"TCP lifecycle hook {where} failed - error: {output}" if result == FAILURE else ""
        except (ProbeError, OSError) as e:
            return f"lifecycle hook {where} failed - error: {e}"
        except Exception as e:  # the runtime's error (the container is gone, ...)
            return f"lifecycle hook {where} failed - error: {e}"
        return f"lifecycle hook {where} has no handler: give exec, httpGet or tcpSocket"

    def pre_stop(self, pod: core_pb2.Pod, container: core_pb2.Container | None, container_id: str,
                 pod_ip: str, grace: int, minimum: int = 2) -> tuple[int, str]:
        """Runs the container's preStop hook (if any) within ``grace`` seconds;
        (the grace left for the stop, the hook's failure message or "")."""
        if container is None or not container.HasField("lifecycle") \
                or not container.lifecycle.HasField("pre_stop") or grace <= 0:
            return max(grace, minimum), ""
        start = self.clock()
        message = self.run(container.lifecycle.pre_stop, pod, container, container_id, pod_ip, grace)
        used = int(self.clock() - start)
        return max(grace - used, minimum), message
