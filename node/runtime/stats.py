"""Resource usage of containers and sandboxes, read from their cgroup v1 files, in CRI's terms.

CPU: cumulative ``cpuacct.usage`` plus a rate (usage_nano_cores) from the previous sample, as
containerd computes it. Memory: working set = usage - inactive file cache (what the kubelet
evicts on). Writable layer: bytes and inodes of the container's overlay upper directory.
"""

from __future__ import annotations

import os
import threading
import time

from node.disk_usage import du
from node.pb import cri_pb2
from node.runtime.cgroups import CGROUP_ROOT

UNLIMITED = 1 << 62  # a v1 memory limit at or above this is "no limit"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _memory_stat(path: str) -> dict[str, int]:
    out = {}
    try:
        with open(os.path.join(path, "memory.stat")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                out[key] = int(value)
    except (OSError, ValueError):
        pass
    return out


def _u64(value: int | None) -> cri_pb2.UInt64Value | None:
    return None if value is None else cri_pb2.UInt64Value(value=max(0, value))


class CpuRates:
    """The previous cumulative CPU sample per cgroup, for usage_nano_cores."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def rate(self, key: str, now: int, usage: int) -> int | None:
        with self._lock:
            prev = self._last.get(key)
            self._last[key] = (now, usage)
            if len(self._last) > 4096:  # forget cgroups not sampled for 10 minutes (gone ones)
                old = now - 600_000_000_000
                self._last = {k: v for k, v in self._last.items() if v[0] >= old}
        if prev is None or now <= prev[0] or usage < prev[1]:
            return None
        return (usage - prev[1]) * 1_000_000_000 // (now - prev[0])



def cpu_usage(cgroup: str, rates: CpuRates) -> cri_pb2.CpuUsage:
    now = time.time_ns()
    usage = _read_int(os.path.join(CGROUP_ROOT, "cpuacct", cgroup.lstrip("/"), "cpuacct.usage"))
    out = cri_pb2.CpuUsage(timestamp=now)
    if usage is not None:
        out.usage_core_nano_seconds.value = usage
        rate = rates.rate(cgroup, now, usage)
        if rate is not None:
            out.usage_nano_cores.value = rate
    return out


def memory_usage(cgroup: str) -> cri_pb2.MemoryUsage:
    path = os.path.join(CGROUP_ROOT, "memory", cgroup.lstrip("/"))
    out = cri_pb2.MemoryUsage(timestamp=time.time_ns())
    usage = _read_int(os.path.join(path, "memory.usage_in_bytes"))
    if usage is None:
        return out
    stat = _memory_stat(path)
    working = max(0, usage - stat.get("total_inactive_file", 0))
    out.usage_bytes.value = usage
    out.working_set_bytes.value = working
    out.rss_bytes.value = stat.get("total_rss", 0)
    out.page_faults.value = stat.get("total_pgfault", 0)
    out.major_page_faults.value = stat.get("total_pgmajfault", 0)
    limit = _read_int(os.path.join(path, "memory.limit_in_bytes"))
    if limit is not None and limit < UNLIMITED:
        out.available_bytes.value = max(0, limit - working)
    return out


def process_count(cgroup: str) -> cri_pb2.ProcessUsage:
    out = cri_pb2.ProcessUsage(timestamp=time.time_ns())
    n = _read_int(os.path.join(CGROUP_ROOT, "pids", cgroup.lstrip("/"), "pids.current"))
    if n is not None:
        out.process_count.value = n
    return out


def dir_usage(path: str, mountpoint: str) -> cri_pb2.FilesystemUsage:
    """Bytes (allocated blocks) and inodes under `path`, not following links or mounts."""
    used, inodes = du(path)
    return cri_pb2.FilesystemUsage(timestamp=time.time_ns(),
                                   fs_id=cri_pb2.FilesystemIdentifier(mountpoint=mountpoint),
                                   used_bytes=_u64(used), inodes_used=_u64(inodes))
