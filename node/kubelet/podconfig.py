"""CRI configs from a pod spec: the sandbox's and each container's.

Kubernetes' generatePodSandboxConfig and generateContainerConfig
(pkg/kubelet/kuberuntime): metadata with attempts, the io.kubernetes.* labels,
log paths under the pod's log directory (``<ns>_<name>_<uid>/<container>/<restart>.log``),
command and args with ``$(VAR)`` expansion against the environment node.kubelet.env
resolved, and Linux resources from requests and limits (cpu shares and CFS quota, memory
limit, the QoS OOM score adjustment).
"""

from __future__ import annotations

import os

from apiserver.pb import core_pb2
from apiserver.quantity import bytes_of, milli_cpu
from node.kubelet import labels
from node.kubelet.env import Environment, expand_command_and_args
from node.kubelet.status import qos_class
from node.pb import cri_pb2

CPU_PERIOD = 100_000      # microseconds: the CFS period the kubelet sets
MIN_QUOTA = 1_000
MIN_SHARES, MAX_SHARES = 2, 262_144
GUARANTEED_OOM_SCORE_ADJ = -997
BEST_EFFORT_OOM_SCORE_ADJ = 1000

# ---- the sandbox ----

def pod_log_directory(root: str, pod: core_pb2.Pod) -> str:
    m = pod.metadata
    return os.path.join(root, f"{m.namespace}_{m.name}_{m.uid}")


def namespace_options(pod: core_pb2.Pod) -> cri_pb2.NamespaceOption:
    """The pod's namespaces, for its sandbox and for each of its containers (the kubelet's
    namespacesForPod): the node's network with hostNetwork, else the pod's; a pid namespace per
    container unless shareProcessNamespace (then the pod's: the sandbox's process is pid 1 for
    all of them); the pod's IPC. A container config without them means POD for all three, the
    enum's zero, and containerd then puts every container in the sandbox's pid namespace."""
    return cri_pb2.NamespaceOption(
        network=cri_pb2.NODE if pod.spec.host_network else cri_pb2.POD,
        pid=cri_pb2.POD if pod.spec.share_process_namespace else cri_pb2.CONTAINER,
        ipc=cri_pb2.POD)


def pod_cgroup_parent(pod: core_pb2.Pod, cgroup_root: str) -> str:
    """The pod's cgroup as the kubelet names it for the cgroupfs driver (cgroups per QoS class):
    ``<root>/kubepods/pod<uid>`` for Guaranteed, ``<root>/kubepods/burstable/pod<uid>`` and
    ``<root>/kubepods/besteffort/pod<uid>``; the runtime puts the sandbox's and the containers'
    cgroups below it (containerd does; our runtime keeps its own ``/<prefix>/<sandbox>`` tree)."""
    qos = qos_class(pod.spec)
    root = cgroup_root.strip("/")
    qos_level = "" if qos == "Guaranteed" else "/" + qos.lower()
    return f"{'/' + root if root else ''}/kubepods{qos_level}/pod{pod.metadata.uid}"


def sandbox_config(pod: core_pb2.Pod, attempt: int, log_root: str, cgroup_root: str = "",
                   dns_config: cri_pb2.DNSConfig | None = None) -> cri_pb2.PodSandboxConfig:
    """``cgroup_root``: the kubelet's --cgroup-root; when given, the sandbox's cgroup_parent is
    the pod's cgroup below it (else the runtime chooses, and containerd's choice, /k8s.io/<id>,
    is outside any node's tree). ``dns_config``: the pod's resolver settings (node.kubelet.dns);
    None leaves them to the runtime (the node's)."""
    m = pod.metadata
    cfg = cri_pb2.PodSandboxConfig(
        metadata=cri_pb2.PodSandboxMetadata(name=m.name, uid=m.uid, namespace=m.namespace, attempt=attempt),
        hostname=(pod.spec.hostname or m.name)[:63],
        log_directory=pod_log_directory(log_root, pod),
        labels=labels.sandbox_labels(pod), annotations=labels.sandbox_annotations(pod))
    if dns_config is not None:
        cfg.dns_config.CopyFrom(dns_config)
    for c in pod.spec.containers:
        for p in c.ports:
            cfg.port_mappings.add(protocol=cri_pb2.Protocol.Value(p.protocol or "TCP"),
                                  container_port=p.container_port, host_port=p.host_port, host_ip=p.host_ip)
    cfg.linux.security_context.namespace_options.CopyFrom(namespace_options(pod))
    if cgroup_root:
        cfg.linux.cgroup_parent = pod_cgroup_parent(pod, cgroup_root)
    return cfg


# ---- resources ----

def cpu_shares(milli: int) -> int:
    if milli == 0:
        return MIN_SHARES
    return max(MIN_SHARES, min(MAX_SHARES, milli * 1024 // 1000))


def cpu_quota(milli: int, period: int = CPU_PERIOD) -> int:
    if milli == 0:
        return 0
    return max(MIN_QUOTA, milli * period // 1000)


def oom_score_adj(pod: core_pb2.Pod, container: core_pb2.Container, memory_capacity: int) -> int:
    qos = qos_class(pod.spec)
    if qos == "Guaranteed":
        return GUARANTEED_OOM_SCORE_ADJ
    if qos == "BestEffort":
        return BEST_EFFORT_OOM_SCORE_ADJ
    request = bytes_of(container.resources.requests.get("memory", "0"))
    adj = 1000 - (1000 * request) // memory_capacity if memory_capacity > 0 else 1000
    if adj < 1000 + GUARANTEED_OOM_SCORE_ADJ:
        return 1000 + GUARANTEED_OOM_SCORE_ADJ
    if adj == BEST_EFFORT_OOM_SCORE_ADJ:
        return adj - 1
    return adj


def linux_resources(pod: core_pb2.Pod, container: core_pb2.Container,
                    memory_capacity: int) -> cri_pb2.LinuxContainerResources:
    req, lim = container.resources.requests, container.resources.limits
    cpu_req = milli_cpu(req["cpu"]) if "cpu" in req else 0
    cpu_lim = milli_cpu(lim["cpu"]) if "cpu" in lim else 0
    r = cri_pb2.LinuxContainerResources(
        cpu_shares=cpu_shares(cpu_lim if cpu_req == 0 and cpu_lim else cpu_req),
        cpu_period=CPU_PERIOD, cpu_quota=cpu_quota(cpu_lim),
        oom_score_adj=oom_score_adj(pod, container, memory_capacity))
    if "memory" in lim:
        r.memory_limit_in_bytes = bytes_of(lim["memory"])
    return r


# ---- the container ----

def container_log_path(container: core_pb2.Container, restart_count: int) -> str:
    """Relative to the sandbox's log directory."""
    return os.path.join(container.name, f"{restart_count}.log")


def container_config(pod: core_pb2.Pod, container: core_pb2.Container, *, restart_count: int,
                     image_ref: str, env: Environment,
                     mounts: list[cri_pb2.Mount] | None = None,
                     memory_capacity: int = 0) -> cri_pb2.ContainerConfig:
    command, args = expand_command_and_args(container, env.vars)
    cfg = cri_pb2.ContainerConfig(
        metadata=cri_pb2.ContainerMetadata(name=container.name, attempt=restart_count),
        image=cri_pb2.ImageSpec(image=image_ref or container.image, user_specified_image=container.image),
        command=command,
        args=args,
        working_dir=container.working_dir,
        stdin=container.stdin, stdin_once=container.stdin_once, tty=container.tty,
        labels=labels.container_labels(pod, container),
        annotations=labels.container_annotations(pod, container, restart_count),
        log_path=container_log_path(container, restart_count))
    for k, v in env.as_bytes():
        cfg.envs.add(key=k, value=v)  # bytes in CRI (a Secret's values need not be UTF-8)
    cfg.mounts.extend(mounts or [])
    cfg.linux.resources.CopyFrom(linux_resources(pod, container, memory_capacity))
    cfg.linux.security_context.namespace_options.CopyFrom(namespace_options(pod))
    return cfg

