"""The kubelet's /stats/summary: a Snapshot (collector.py) as the Summary of
k8s.io/kubelet/pkg/apis/stats/v1alpha1, in its JSON field names. Absent figures are left out,
as upstream's optional fields are; times are metav1.Time (RFC 3339, seconds).

``only_cpu_and_memory`` (the query parameter of the same name) gives what upstream's
GetCPUAndMemoryStats gives: the node's and each pod's and container's CPU and memory, nothing
of networks or filesystems.
"""

from __future__ import annotations

import datetime

from node.kubelet.stats.collector import CpuMemory, Network, PodStats, Snapshot
from node.kubelet.stats.fsusage import FsUsage
from node.kubelet.stats.netdev import DEFAULT_INTERFACE


def rfc3339(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _some(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def cpu(cm: CpuMemory | None) -> dict | None:
    if cm is None or cm.usage.cpu_ns is None:
        return None
    return _some({"time": rfc3339(cm.usage.time_ns), "usageNanoCores": cm.nano_cores,
                  "usageCoreNanoSeconds": cm.usage.cpu_ns})


def memory(cm: CpuMemory | None, capacity: int | None = None) -> dict | None:
    """``capacity``: the node's memory, its availableBytes' base when the cgroup has no limit."""
    if cm is None or cm.usage.memory_bytes is None:
        return None
    u = cm.usage
    limit = u.memory_limit if u.memory_limit is not None else capacity
    available = max(0, limit - u.working_set_bytes) if limit else None
    return _some({"time": rfc3339(u.time_ns), "availableBytes": available, "usageBytes": u.memory_bytes,
                  "workingSetBytes": u.working_set_bytes, "rssBytes": u.rss_bytes,
                  "pageFaults": u.page_faults, "majorPageFaults": u.major_page_faults})


def _interface(i) -> dict:
    return {"name": i.name, "rxBytes": i.rx_bytes, "rxErrors": i.rx_errors, "txBytes": i.tx_bytes,
            "txErrors": i.tx_errors}


def network(net: Network | None) -> dict | None:
    """The default interface (eth0) inline, as upstream, and every interface in ``interfaces``."""
    if net is None:
        return None
    out = {"time": rfc3339(net.time_ns), "name": ""}
    default = next((i for i in net.interfaces if i.name == DEFAULT_INTERFACE), None)
    if default is not None:
        out.update(_interface(default))
    if net.interfaces:
        out["interfaces"] = [_interface(i) for i in net.interfaces]
    return out


def fs(f: FsUsage | None) -> dict | None:
    if f is None:
        return None
    return _some({"time": rfc3339(f.time_ns), "availableBytes": f.available, "capacityBytes": f.capacity,
                  "usedBytes": f.used, "inodesFree": f.inodes_free, "inodes": f.inodes,
                  "inodesUsed": f.inodes_used})


def _ephemeral(pod: PodStats, root: FsUsage | None) -> dict | None:
    """What the pod's containers (writable layers and logs) and emptyDir volumes use: the
    eviction manager's figure."""
    parts = [f for c in pod.containers for f in (c.rootfs, c.logs) if f is not None] + [v for _, v in pod.volumes]
    if not parts:
        return None
    used = sum(f.used or 0 for f in parts)
    inodes = sum(f.inodes_used or 0 for f in parts)
    base = root or parts[0]
    return fs(FsUsage(max(f.time_ns for f in parts), base.available, base.capacity, used, base.inodes_free,
                      base.inodes, inodes))


def pod_stats(pod: PodStats, *, only_cpu_and_memory: bool, root: FsUsage | None) -> dict:
    containers = []
    for c in pod.containers:
        entry = {"name": c.name, "startTime": rfc3339(c.start_ns), "cpu": cpu(c.cpu_memory),
                 "memory": memory(c.cpu_memory)}
        if not only_cpu_and_memory:
            entry.update(rootfs=fs(c.rootfs), logs=fs(c.logs))
        containers.append(_some(entry))
    out = {"podRef": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
           "startTime": rfc3339(pod.start_ns), "containers": containers,
           "cpu": cpu(pod.cpu_memory), "memory": memory(pod.cpu_memory)}
    if not only_cpu_and_memory:
        out["network"] = network(pod.network)
        if pod.volumes:
            out["volume"] = [{**fs(v), "name": name} for name, v in pod.volumes]
        out["ephemeral-storage"] = _ephemeral(pod, root)
        if pod.processes is not None:
            out["process_stats"] = {"process_count": pod.processes}
    return _some(out)


def summary(snapshot: Snapshot, node_name: str, *, memory_capacity: int | None = None,
            only_cpu_and_memory: bool = False) -> dict:
    n = snapshot.node
    node = {"nodeName": node_name, "startTime": rfc3339(n.start_ns), "cpu": cpu(n.cpu_memory),
            "memory": memory(n.cpu_memory, memory_capacity)}
    if not only_cpu_and_memory:
        node["network"] = network(n.network)
        node["fs"] = fs(n.fs)
        if n.image_fs is not None:
            node["runtime"] = {"imageFs": fs(n.image_fs)}
        if n.max_pid is not None or n.processes is not None:
            node["rlimit"] = _some({"time": rfc3339(n.rlimit_ns), "maxpid": n.max_pid, "curproc": n.processes})
    pods = [pod_stats(p, only_cpu_and_memory=only_cpu_and_memory, root=n.fs) for p in snapshot.pods]
    return {"node": _some(node), "pods": pods}
