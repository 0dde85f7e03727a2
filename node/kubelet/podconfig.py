"""CRI configs from a pod spec: the sandbox's and each container's.

Kubernetes' generatePodSandboxConfig and generateContainerConfig
(pkg/kubelet/kuberuntime): metadata with attempts, the io.kubernetes.* labels,
log paths under the pod's log directory (``<ns>_<name>_<uid>/<container>/<restart>.log``),
command and args with ``$(VAR)`` expansion, the environment (values, fieldRef,
configMapKeyRef, secretKeyRef), and Linux resources from requests and limits
(cpu shares and CFS quota, memory limit, the QoS OOM score adjustment).

A configuration that cannot be made (a missing ConfigMap or key that is not
optional) raises ConfigError: the container waits in CreateContainerConfigError.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from apiserver.pb import core_pb2
from apiserver.quantity import bytes_of, milli_cpu
from node.kubelet import labels
from node.kubelet.status import qos_class
from node.pb import cri_pb2

CPU_PERIOD = 100_000      # microseconds: the CFS period the kubelet sets
MIN_QUOTA = 1_000
MIN_SHARES, MAX_SHARES = 2, 262_144
GUARANTEED_OOM_SCORE_ADJ = -997
BEST_EFFORT_OOM_SCORE_ADJ = 1000

# (resource, namespace, name) -> the object's data, None when it does not exist
Lookup = Callable[[str, str, str], "dict[str, str] | None"]


class ConfigError(Exception):
    """The container's configuration cannot be made (CreateContainerConfigError)."""


# ---- the sandbox ----

def pod_log_directory(root: str, pod: core_pb2.Pod) -> str:
    m = pod.metadata
    return os.path.join(root, f"{m.namespace}_{m.name}_{m.uid}")


def sandbox_config(pod: core_pb2.Pod, attempt: int, log_root: str) -> cri_pb2.PodSandboxConfig:
    m = pod.metadata
    cfg = cri_pb2.PodSandboxConfig(
        metadata=cri_pb2.PodSandboxMetadata(name=m.name, uid=m.uid, namespace=m.namespace, attempt=attempt),
        hostname=(pod.spec.hostname or m.name)[:63],
        log_directory=pod_log_directory(log_root, pod),
        labels=labels.sandbox_labels(pod), annotations=labels.sandbox_annotations(pod))
    for c in pod.spec.containers:
        for p in c.ports:
            cfg.port_mappings.add(protocol=cri_pb2.Protocol.Value(p.protocol or "TCP"),
                                  container_port=p.container_port, host_port=p.host_port, host_ip=p.host_ip)
    ns = cfg.linux.security_context.namespace_options
    ns.network = cri_pb2.NODE if pod.spec.host_network else cri_pb2.POD
    ns.pid = cri_pb2.CONTAINER
    ns.ipc = cri_pb2.POD
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


# ---- environment and command ----

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined name is replaced, an undefined
    one stays as written, ``$$`` is a literal ``$``."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)
    return _REF.sub(sub, text)


def _field_value(pod: core_pb2.Pod, path: str, pod_ip: str, host_ip: str) -> str:
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return dict(getattr(pod.metadata, m.group(1))).get(m.group(2), "")
    simple = {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace,
              "metadata.uid": pod.metadata.uid, "spec.nodeName": pod.spec.node_name,
              "spec.serviceAccountName": pod.spec.service_account_name,
              "status.hostIP": host_ip, "status.hostIPs": host_ip,
              "status.podIP": pod_ip, "status.podIPs": pod_ip}
    if path not in simple:
        raise ConfigError(f"unsupported fieldRef {path!r}: use metadata.name, metadata.namespace, "
                          f"metadata.uid, metadata.labels['k'], metadata.annotations['k'], "
                          f"spec.nodeName, spec.serviceAccountName, status.podIP or status.hostIP")
    return simple[path]


def _key_ref(lookup: Lookup | None, resource: str, kind: str, namespace: str,
             ref: core_pb2.KeySelector) -> str | None:
    optional = ref.HasField("optional") and ref.optional
    data = lookup(resource, namespace, ref.name) if lookup is not None else None
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{kind.lower()} "{ref.name}" not found')
    if ref.key not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {ref.key} in {kind} {namespace}/{ref.name}")
    value = data[ref.key]
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def environment(pod: core_pb2.Pod, container: core_pb2.Container, *, pod_ip: str = "",
                host_ip: str = "", lookup: Lookup | None = None) -> list[tuple[str, str]]:
    """The container's environment, in spec order (a later duplicate wins, as
    Kubernetes'); ``lookup`` reads ConfigMaps and Secrets (their data)."""
    env: dict[str, str] = {}
    ns = pod.metadata.namespace
    for var in container.env:
        if var.HasField("value_from"):
            src = var.value_from
            if src.HasField("field_ref"):
                value = _field_value(pod, src.field_ref.field_path, pod_ip, host_ip)
            elif src.HasField("config_map_key_ref"):
                value = _key_ref(lookup, "configmaps", "ConfigMap", ns, src.config_map_key_ref)
            elif src.HasField("secret_key_ref"):
                value = _key_ref(lookup, "secrets", "Secret", ns, src.secret_key_ref)
            else:
                value = ""
            if value is None:
                continue  # an optional source that is not there
        else:
            value = expand(var.value, env)
        env[var.name] = value
    return list(env.items())


# ---- the container ----

def container_log_path(container: core_pb2.Container, restart_count: int) -> str:
    """Relative to the sandbox's log directory."""
    return os.path.join(container.name, f"{restart_count}.log")


def container_config(pod: core_pb2.Pod, container: core_pb2.Container, *, restart_count: int,
                     image_ref: str, env: list[tuple[str, str]],
                     mounts: list[cri_pb2.Mount] | None = None,
                     memory_capacity: int = 0) -> cri_pb2.ContainerConfig:
    values = dict(env)
    cfg = cri_pb2.ContainerConfig(
        metadata=cri_pb2.ContainerMetadata(name=container.name, attempt=restart_count),
        image=cri_pb2.ImageSpec(image=image_ref or container.image, user_specified_image=container.image),
        command=[expand(c, values) for c in container.command],
        args=[expand(a, values) for a in container.args],
        working_dir=container.working_dir,
        labels=labels.container_labels(pod, container),
        annotations=labels.container_annotations(pod, container, restart_count),
        log_path=container_log_path(container, restart_count))
    for k, v in env:
        cfg.envs.add(key=k, value=v.encode())  # bytes in CRI (values need not be UTF-8)
    cfg.mounts.extend(mounts or [])
    cfg.linux.resources.CopyFrom(linux_resources(pod, container, memory_capacity))
    return cfg

