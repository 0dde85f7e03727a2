"""The kubelet's resource figures, gathered by a periodic housekeeping (cAdvisor's, 10 s
upstream: --housekeeping-interval) so that /stats/summary and /metrics/resource only format
what is already known.

Each pass asks the runtime for its ready sandboxes and running containers (CRI), finds a new
container's cgroup once (its init process's, from ContainerStatus' verbose info) and a new
sandbox's network namespace once (PodSandboxStatus' verbose info), then reads every cgroup
(cgroupfs), every pod's interfaces (netdev), the containers' writable layers (CRI
ListContainerStats), log files and emptyDir volumes (fsusage), and the node's figures: the
machine's root cgroup (as upstream: node CPU and memory are the machine's, whichever node
this kubelet is on the machine), the node's namespace interfaces, the kubelet root's
filesystem, the runtime's image filesystem (CRI ImageFsInfo), pid limits. usageNanoCores is
the CPU time between this pass and the previous one, per cgroup, so it shows from the
second pass on. The result is one immutable Snapshot, replaced whole at the end of a pass.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass

from node.cri.client import CriError
from node.disk_usage import du
from node.kubelet.stats import cgroupfs, fsusage, netdev
from node.pb import cri_pb2
from promtext import boot_time

log = logging.getLogger("kubelet.stats")

HOUSEKEEPING_INTERVAL = 10.0
# the filesystem walks (writable layers, the image store, emptyDir volumes) run every this
# many passes (a minute at the default interval, as the kubelet's volume stats period)
FS_EVERY = 6
EMPTY_DIR = "kubernetes.io~empty-dir"
POD_UID = "io.kubernetes.pod.uid"


@dataclass(frozen=True)
class CpuMemory:
    usage: cgroupfs.Usage
    nano_cores: int | None = None  # None until a second sample


@dataclass(frozen=True)
class ContainerStats:
    name: str
    id: str
    start_ns: int
    image: str = ""
    cgroup: str = ""  # its cgroup's path (cAdvisor's id label)
    cpu_memory: CpuMemory | None = None
    rootfs: fsusage.FsUsage | None = None
    logs: fsusage.FsUsage | None = None


@dataclass(frozen=True)
class Network:
    time_ns: int
    interfaces: tuple[netdev.Interface, ...]


@dataclass(frozen=True)
class PodStats:
    name: str
    namespace: str
    uid: str
    start_ns: int
    containers: tuple[ContainerStats, ...] = ()
    cpu_memory: CpuMemory | None = None
    network: Network | None = None
    processes: int | None = None
    volumes: tuple[tuple[str, fsusage.FsUsage], ...] = ()
    cgroup: str = ""


@dataclass(frozen=True)
class NodeStats:
    start_ns: int
    cpu_memory: CpuMemory | None = None
    network: Network | None = None
    fs: fsusage.FsUsage | None = None
    image_fs: fsusage.FsUsage | None = None
    max_pid: int | None = None
    processes: int | None = None
    rlimit_ns: int = 0


@dataclass(frozen=True)
class Snapshot:
    time_ns: int
    node: NodeStats
    pods: tuple[PodStats, ...] = ()
    error: str = ""  # why the last pass failed ("" it did not): the resource metrics' scrape error


@dataclass
class _Container:
    cgroup: cgroupfs.Cgroup | None
    start_ns: int
    log_path: str
    pid: int


def _verbose_pid(info: dict) -> int:
    """The pid in a CRI verbose answer: ours says "pid", containerd's "info" is JSON with one."""
    for value in (info.get("pid"), _json(info.get("info")).get("pid")):
        try:
            if value and int(value) > 0:
                return int(value)
        except (TypeError, ValueError):
            pass
    return 0


def _json(text) -> dict:
    try:
        out = json.loads(text) if text else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def sandbox_netns(resp: cri_pb2.PodSandboxStatusResponse, node_netns: str) -> str:
    """Where a sandbox's interfaces are: the node's namespace for a host-network pod, else
    what its verbose info names (ours: "netns"; containerd: the runtime spec's network
    namespace, or its pause process's), "" when it names none."""
    ns = resp.status.linux.namespaces.options
    if ns.network == cri_pb2.NODE:
        return node_netns
    info = _json(resp.info.get("info"))
    if info.get("netns"):
        return info["netns"]
    spec_ns = ((info.get("runtimeSpec") or {}).get("linux") or {}).get("namespaces") or []
    path = next((n.get("path") for n in spec_ns if n.get("type") == "network" and n.get("path")), "")
    if path:
        return path
    pid = _verbose_pid(dict(resp.info))
    return f"/proc/{pid}/ns/net" if pid else ""


class StatsCollector:
    """``runtime``: the CRI RuntimeService; ``images``: its ImageService (None: no image fs);
    ``root``: the kubelet's directory (pods' volumes under pods/<uid>/volumes);
    ``node_netns``: the node's network namespace ("" the kubelet's own)."""

    def __init__(self, runtime, images=None, *, root: str, node_netns: str = "",
                 interval: float = HOUSEKEEPING_INTERVAL) -> None:
        self.runtime, self.images = runtime, images
        self.root, self.node_netns, self.interval = root, node_netns, interval
        self.node_start_ns = int(boot_time() * 1e9)
        self.snapshot = Snapshot(time.time_ns(), NodeStats(self.node_start_ns))
        self._containers: dict[str, _Container] = {}
        self._netns: dict[str, str] = {}
        self._previous: dict[str, cgroupfs.Usage] = {}
        self._fs_pass = 0
        self._layers: dict[str, fsusage.FsUsage] = {}
        self._image_fs: fsusage.FsUsage | None = None
        self._volume_cache: dict[str, tuple] = {}
        self._root_cgroup = cgroupfs.root()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StatsCollector:
        self._thread = threading.Thread(target=self._loop, name="kubelet-housekeeping", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            self.housekeep()
            if self._stop.wait(self.interval):
                return

    # ---- one pass ----

    def housekeep(self) -> Snapshot:
        try:
            snapshot = self._gather()
        except CriError as e:
            log.warning("housekeeping: the runtime did not answer: %s", e)
            snapshot = Snapshot(time.time_ns(), self.snapshot.node, self.snapshot.pods, error=str(e))
        except Exception as e:  # noqa: BLE001 (a bad read costs this pass, not the kubelet)
            log.exception("housekeeping failed")
            snapshot = Snapshot(time.time_ns(), self.snapshot.node, self.snapshot.pods, error=f"{type(e).__name__}: {e}")
        self.snapshot = snapshot
        return snapshot

    def _rate(self, key: str, usage: cgroupfs.Usage) -> CpuMemory:
        prev = self._previous.get(key)
        self._previous[key] = usage
        rate = None
        if prev is not None and usage.cpu_ns is not None and prev.cpu_ns is not None and \
                usage.time_ns > prev.time_ns and usage.cpu_ns >= prev.cpu_ns:
            rate = (usage.cpu_ns - prev.cpu_ns) * 1_000_000_000 // (usage.time_ns - prev.time_ns)
        return CpuMemory(usage, rate)

    def _discover(self, cid: str) -> _Container:
        resp = self.runtime.container_status(cid, verbose=True)
        pid = _verbose_pid(dict(resp.info))
        return _Container(cgroupfs.of_pid(pid) if pid else None, resp.status.started_at, resp.status.log_path, pid)

    def _network(self, netns: str) -> Network | None:
        if not netns:
            return None
        try:
            return Network(time.time_ns(), tuple(netdev.interfaces(netns)))
        except Exception as e:  # noqa: BLE001 (NetworkError, OSError: the namespace went away)
            log.debug("interfaces of %s: %s", netns, e)
            return None

    def _gather(self) -> Snapshot:
        ready = cri_pb2.PodSandboxFilter(state=cri_pb2.PodSandboxStateValue(state=cri_pb2.SANDBOX_READY))
        running = cri_pb2.ContainerFilter(state=cri_pb2.ContainerStateValue(state=cri_pb2.CONTAINER_RUNNING))
        sandboxes = self.runtime.list_pod_sandbox(ready)
        containers = self.runtime.list_containers(running)
        live = {c.id for c in containers}
        for cid in [c for c in self._containers if c not in live]:
            del self._containers[cid]
        for c in containers:
            known = self._containers.get(c.id)
            if known is None or known.cgroup is None:
                try:
                    self._containers[c.id] = self._discover(c.id)
                except CriError as e:
                    if not e.not_found:
                        raise
        sandbox_ids = {s.id for s in sandboxes}
        for sid in [s for s in self._netns if s not in sandbox_ids]:
            del self._netns[sid]
        for s in sandboxes:
            if s.id not in self._netns:
                try:
                    self._netns[s.id] = sandbox_netns(self.runtime.pod_sandbox_status(s.id, verbose=True),
                                                      self.node_netns)
                except CriError as e:
                    if not e.not_found:
                        raise
        fs_due = self._fs_pass % FS_EVERY == 0
        self._fs_pass += 1
        if fs_due:
            self._layers = self._writable_layers()
            self._image_fs = self._image_filesystem()
            self._volume_cache = {s.metadata.uid: self._volumes(s.metadata.uid) for s in sandboxes}
        layers = self._layers
        keep: set[str] = {"node"}
        by_sandbox: dict[str, list] = {}
        for c in containers:
            by_sandbox.setdefault(c.pod_sandbox_id, []).append(c)
        pods = []
        for s in sandboxes:
            pods.append(self._pod(s, by_sandbox.get(s.id, []), layers, keep))
        self._previous = {k: v for k, v in self._previous.items() if k in keep}
        return Snapshot(time.time_ns(), self._node(self._image_fs), tuple(pods))

    def _writable_layers(self) -> dict[str, fsusage.FsUsage]:
        try:
            stats = self.runtime.list_container_stats()
        except CriError as e:
            log.debug("ListContainerStats: %s", e)
            return {}
        return {st.attributes.id: fs for st in stats if (fs := _layer(st)) is not None}

    def _writable_layer(self, cid: str) -> fsusage.FsUsage | None:
        """A container new since the last walk: its own ContainerStats."""
        try:
            fs = _layer(self.runtime.container_stats(cid))
        except CriError as e:
            log.debug("ContainerStats of %s: %s", cid, e)
            return None
        if fs is not None:
            self._layers[cid] = fs
        return fs

    def _pod(self, sandbox, containers, layers, keep: set[str]) -> PodStats:
        meta = sandbox.metadata
        stats, pod_cgroup = [], None
        for c in sorted(containers, key=lambda c: c.metadata.name):
            known = self._containers.get(c.id)
            if known is None:
                continue
            cpu_memory = None
            if known.cgroup is not None:
                keep.add(c.id)
                cpu_memory = self._rate(c.id, cgroupfs.read(known.cgroup))
                pod_cgroup = pod_cgroup or known.cgroup.parent()
            logs = None
            if known.log_path:
                used, inodes = du(known.log_path)
                logs = fsusage.filesystem(known.log_path, used, inodes)
            stats.append(ContainerStats(c.metadata.name, c.id, known.start_ns or c.created_at, c.image.image,
                                        known.cgroup.path if known.cgroup else "", cpu_memory,
                                        layers.get(c.id) or self._writable_layer(c.id), logs))
        cpu_memory = processes = None
        if pod_cgroup is not None:
            key = f"pod/{meta.uid}"
            keep.add(key)
            cpu_memory = self._rate(key, cgroupfs.read(pod_cgroup))
            processes = cgroupfs.process_count(pod_cgroup)
        netns = self._netns.get(sandbox.id, "")
        if not netns:  # a runtime that names none: any container's namespace is the pod's
            pid = next((k.pid for c in containers if (k := self._containers.get(c.id)) and k.pid), 0)
            netns = f"/proc/{pid}/ns/net" if pid else ""
        volumes = self._volume_cache.get(meta.uid)
        if volumes is None:  # a pod new since the last walk
            volumes = self._volume_cache[meta.uid] = self._volumes(meta.uid)
        return PodStats(meta.name, meta.namespace, meta.uid, sandbox.created_at, tuple(stats), cpu_memory,
                        self._network(netns), processes, volumes, pod_cgroup.path if pod_cgroup else "")

    def _volumes(self, uid: str) -> tuple[tuple[str, fsusage.FsUsage], ...]:
        base = os.path.join(self.root, "pods", uid, "volumes", EMPTY_DIR)
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return ()
        out = []
        for name in names:
            path = os.path.join(base, name)
            used, inodes = du(path)
            fs = fsusage.filesystem(path, used, inodes)
            if fs is not None:
                out.append((name, fs))
        return tuple(out)

    def _image_filesystem(self) -> fsusage.FsUsage | None:
        if self.images is None:
            return None
        try:
            fss = self.images.image_fs_info().image_filesystems
        except CriError as e:
            log.debug("ImageFsInfo: %s", e)
            return None
        if not fss:
            return None
        f = fss[0]
        return fsusage.filesystem(f.fs_id.mountpoint or self.root, f.used_bytes.value, f.inodes_used.value)

    def _node(self, image_fs: fsusage.FsUsage | None) -> NodeStats:
        cpu_memory = self._rate("node", cgroupfs.read(self._root_cgroup, machine=True))
        return NodeStats(self.node_start_ns, cpu_memory, self._network(self.node_netns),
                         fsusage.filesystem(self.root), image_fs, cgroupfs.read_int("/proc/sys/kernel/pid_max"),
                         _processes(), time.time_ns())


def _layer(st: cri_pb2.ContainerStats) -> fsusage.FsUsage | None:
    """A ContainerStats' writable layer, with its filesystem's capacity."""
    if not st.HasField("writable_layer"):
        return None
    layer = st.writable_layer
    fs = fsusage.filesystem(layer.fs_id.mountpoint, layer.used_bytes.value, layer.inodes_used.value) \
        if layer.fs_id.mountpoint else None
    return fs or fsusage.FsUsage(time.time_ns(), used=layer.used_bytes.value, inodes_used=layer.inodes_used.value)


def _processes() -> int | None:
    """Tasks on the machine (/proc/loadavg's total: sysinfo's procs, upstream's curproc)."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        return None
