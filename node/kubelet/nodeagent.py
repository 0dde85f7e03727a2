"""One real node's registration and heartbeats, as a kubelet with node leases.

The Node is created with its capacity (the machine's, or what it is given),
its InternalIP, podCIDR and nodeInfo; a restarted kubelet finds it there and
writes its status again. The coordination Lease ``kube-node-lease/<node>`` is
renewed every ``heartbeat_interval``; the Node's conditions are written every
``status_interval`` and at once when the runtime's readiness changes. Ready
follows the CRI runtime's own RuntimeReady and NetworkReady conditions, so a
dead runtime makes a NotReady node, as Kubernetes'.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Callable

from apiserver.errors import ApiError
from apiserver.pb import coordination_pb2, core_pb2
from apiserver.resources import NAMESPACE_NODE_LEASE as LEASE_NAMESPACE
from controllers.informer import deep_copy
from controllers.leaderelection import now_micro
from controllers.podutil import now_rfc3339
from node.kubelet.status import set_condition

log = logging.getLogger("node.kubelet.nodeagent")

KUBELET_VERSION = "v1.30.0-real"
PRESSURE_CONDITIONS = (("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                       ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                       ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"))


def machine_capacity(root: str = "/") -> dict[str, str]:
    """This machine's cpu, memory, ephemeral storage (the filesystem of ``root``) and pods."""
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    st = os.statvfs(root)
    return {"cpu": str(os.cpu_count() or 1), "memory": f"{mem_kib}Ki",
            "ephemeral-storage": str(st.f_blocks * st.f_frsize), "pods": "110"}


def os_image() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def get_or_create_lease(client, node: str, node_uid: str, duration: int) -> coordination_pb2.Lease:
    """The node's Lease in kube-node-lease (made, with its namespace, when missing), owned by
    the Node so that the garbage collector removes it with the node."""
    try:
        return client.get("leases", node, LEASE_NAMESPACE)
    except ApiError as e:
        if e.reason != "NotFound":
            raise
    try:
        client.create(core_pb2.Namespace(metadata={"name": LEASE_NAMESPACE}))
    except ApiError as e:
        # Forbidden: under RBAC a node may not make namespaces (the apiserver made this one)
        if e.reason not in ("AlreadyExists", "Forbidden"):
            raise
    lease = coordination_pb2.Lease()
    lease.metadata.name, lease.metadata.namespace = node, LEASE_NAMESPACE
    lease.metadata.owner_references.add(api_version="v1", kind="Node", name=node, uid=node_uid)
    lease.spec.holder_identity = node
    lease.spec.lease_duration_seconds = duration
    lease.spec.renew_time = now_micro()
    try:
        return client.create(lease)
    except ApiError as e:
        if e.reason != "AlreadyExists":
            raise
        return client.get("leases", node, LEASE_NAMESPACE)


class NodeAgent:
    """``ready()`` -> (ready, message): the runtime's readiness, asked at each status write."""

    def __init__(self, client, name: str, *, node_ip: str, pod_cidr: str = "",
                 capacity: dict[str, str] | None = None, labels: dict[str, str] | None = None,
                 runtime_version: str = "", ready: Callable[[], tuple[bool, str]] | None = None,
                 heartbeat_interval: float = 10.0, lease_duration: int = 40,
                 status_interval: float = 60.0, register_taints: list[tuple[str, str, str]] = ()) -> None:
        """``register_taints``: (key, value, effect) the Node is created with, as the kubelet's
        --register-with-taints; with --cloud-provider=external it is the cloud's
        "uninitialized" taint, which the cloud-controller-manager removes."""
        self.client, self.name, self.node_ip, self.pod_cidr = client, name, node_ip, pod_cidr
        self.register_taints = list(register_taints)
        self.capacity = dict(capacity or machine_capacity())
        self.labels = dict(labels or {})
        self.runtime_version = runtime_version
        self.ready = ready or (lambda: (True, ""))
        self.heartbeat_interval, self.lease_duration = heartbeat_interval, int(lease_duration)
        self.status_interval = status_interval
        self.kubelet_port = 0  # the kubelet API's port (logs, exec), once it listens
        self.uid = ""
        self._lease: coordination_pb2.Lease | None = None
        self._last_ready: bool | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the node object ----

    def _fill_conditions(self, conditions) -> None:
        now = now_rfc3339()
        for type_, reason, message in PRESSURE_CONDITIONS:
            set_condition(conditions, type_, "False", now, reason=reason, message=message, heartbeat=True)
        ok, why = self.ready()
        self._last_ready = ok
        if ok:
            set_condition(conditions, "Ready", "True", now, reason="KubeletReady",
                          message="kubelet is posting ready status", heartbeat=True)
        else:
            set_condition(conditions, "Ready", "False", now, reason="KubeletNotReady", message=why,
                          heartbeat=True)

    def node_object(self) -> core_pb2.Node:
        n = core_pb2.Node()
        n.metadata.name = self.name
        n.metadata.labels.update({"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                                  "kubernetes.io/arch": platform.machine().replace("x86_64", "amd64"),
                                  **self.labels})
        n.spec.pod_cidr = self.pod_cidr
        for key, value, effect in self.register_taints:
            n.spec.taints.add(key=key, value=value, effect=effect)
        n.status.capacity.update(self.capacity)
        n.status.allocatable.update(self.capacity)
        n.status.addresses.add(type="InternalIP", address=self.node_ip)
        n.status.addresses.add(type="Hostname", address=self.name)
        if self.kubelet_port:
            n.status.daemon_endpoints.kubelet_endpoint.port = self.kubelet_port
        info = n.status.node_info
        info.kernel_version = platform.release()
        info.os_image = os_image()
        info.container_runtime_version = self.runtime_version
        info.kubelet_version = KUBELET_VERSION
        info.operating_system = "linux"
        info.architecture = n.metadata.labels["kubernetes.io/arch"]
        self._fill_conditions(n.status.conditions)
        return n

    def register(self) -> None:
        try:
            self.uid = self.client.create(self.node_object()).metadata.uid
            log.info("registered node %s", self.name)
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise
            current = self.client.get("nodes", self.name, "")
            self.uid = current.metadata.uid
            self._write_status(current)
        self._lease = None
        self.renew_lease()

    def _write_status(self, current: core_pb2.Node) -> None:
        updated = deep_copy(current)
        updated.status.capacity.clear()
        updated.status.capacity.update(self.capacity)
        updated.status.allocatable.clear()
        updated.status.allocatable.update(self.capacity)
        if self.kubelet_port:  # a restarted kubelet listens on another port
            updated.status.daemon_endpoints.kubelet_endpoint.port = self.kubelet_port
        self._fill_conditions(updated.status.conditions)
        self.client.update_status(updated)

    def report_status(self) -> None:
        self._write_status(self.client.get("nodes", self.name, ""))

    # ---- the lease ----

    def renew_lease(self) -> None:
        try:
            lease = self._lease or self._get_or_create_lease()
            renewed = deep_copy(lease)
            renewed.spec.renew_time = now_micro()
            renewed.spec.holder_identity = self.name
            renewed.spec.lease_duration_seconds = self.lease_duration
            self._lease = self.client.update(renewed)
        except ApiError:
            self._lease = None
            raise

    def _get_or_create_lease(self) -> coordination_pb2.Lease:
        return get_or_create_lease(self.client, self.name, self.uid, self.lease_duration)

    # ---- the loop ----

    def start(self) -> NodeAgent:
        self._thread = threading.Thread(target=self._run, name=f"node-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        registered = False
        next_lease = next_status = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if not registered:
                    self.register()
                    registered = True
                    next_lease = now + self.heartbeat_interval
                    next_status = now + self.status_interval
                if now >= next_lease:
                    self.renew_lease()
                    next_lease = now + self.heartbeat_interval
                ok, _ = self.ready()
                if now >= next_status or ok != self._last_ready:
                    self.report_status()
                    next_status = now + self.status_interval
            except Exception as e:  # the apiserver is away: try again soon
                log.warning("node %s: heartbeat failed (%s); retrying in 1 s", self.name, e)
                self._stop.wait(1.0)
                continue
            self._stop.wait(min(1.0, self.heartbeat_interval))
