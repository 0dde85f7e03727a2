"""CPU and memory of one cgroup, read from its files as cAdvisor reads them for the kubelet,
on cgroup v1 (a hierarchy per controller) or v2 (the unified one).

A ``Cgroup`` is a cgroup's directory in each hierarchy that counts: cpu (v1 cpuacct), memory,
pids. It is found from a process in it (/proc/PID/cgroup: a container's init), so the kubelet
need not know where its runtime puts containers (ours: ``/<prefix>/<sandbox>/<id>``;
containerd: below the sandbox's cgroup_parent); the pod's cgroup is the parent of its
containers'.

Memory as upstream: usage (v1 memory.usage_in_bytes, v2 memory.current), working set = usage -
inactive file cache (never below 0), rss (v1 total_rss, v2 anon), page faults (pgfault,
pgmajfault); a limit below 2^62 (v1) or not "max" (v2) gives availableBytes = limit - working set.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

UNLIMITED = 1 << 62  # a v1 memory limit at or above this is "no limit"


@dataclass(frozen=True)
class Usage:
    """One sample: ``time_ns`` (the epoch), CPU time in ns since the cgroup began, memory in
    bytes and fault counts; None where a file could not be read."""
    time_ns: int
    cpu_ns: int | None = None
    memory_bytes: int | None = None
    working_set_bytes: int | None = None
    rss_bytes: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    memory_limit: int | None = None


@dataclass(frozen=True)
class Cgroup:
    """The cgroup's directories ("" where its hierarchy is not mounted); ``v2``: cpu and
    memory are the unified hierarchy's; ``path``: its name in the hierarchy (cAdvisor's id)."""
    cpu: str = ""
    memory: str = ""
    pids: str = ""
    v2: bool = False
    path: str = "/"

    def parent(self) -> Cgroup:
        return Cgroup(*(os.path.dirname(d) if d else "" for d in (self.cpu, self.memory, self.pids)), self.v2,
                      os.path.dirname(self.path.rstrip("/")) or "/")


def _mounts() -> tuple[dict[str, str], str]:
    """({v1 controller: its mount point}, the unified hierarchy's mount point or "")."""
    v1, unified = {}, ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fstype, _source, options = (post.split() + ["", ""])[:3]
                mountpoint = pre.split(" ")[4]
                if fstype == "cgroup2":
                    unified = unified or mountpoint
                elif fstype == "cgroup":
                    for opt in options.split(","):
                        v1.setdefault(opt, mountpoint)
    except OSError:
        pass
    return v1, unified


_MOUNTS: tuple[dict[str, str], str] | None = None


def mounts() -> tuple[dict[str, str], str]:
    global _MOUNTS
    if _MOUNTS is None:
        _MOUNTS = _mounts()
    return _MOUNTS


def _unified_has(unified: str, controller: str) -> bool:
    try:
        with open(os.path.join(unified, "cgroup.controllers")) as f:
            return controller in f.read().split()
    except OSError:
        return False


def _cgroup(paths: dict[str, str]) -> Cgroup:
    """``paths``: controller (or "" for the unified hierarchy) -> the path in it."""
    v1, unified = mounts()

    def where(controller: str, v1_name: str) -> tuple[str, bool]:
        if v1_name in v1 and v1_name in paths:
            return os.path.join(v1[v1_name], paths[v1_name].lstrip("/")), False
        if unified and "" in paths and _unified_has(unified, controller):
            return os.path.join(unified, paths[""].lstrip("/")), True
        return "", False

    cpu, v2 = where("cpu", "cpuacct")
    memory, _ = where("memory", "memory")
    pids, _ = where("pids", "pids")
    path = paths.get("cpuacct", paths.get("memory", paths.get("", "/")))
    return Cgroup(cpu, memory, pids, v2, path)


def of_pid(pid: int) -> Cgroup | None:
    """The cgroup the process is in (None: no such process)."""
    paths: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(",") if controllers else [""]:
                    paths[c.removeprefix("name=")] = path
    except (OSError, ValueError):
        return None
    return _cgroup(paths)


def root() -> Cgroup:
    """The machine's root cgroup (upstream's node-level figures)."""
    v1, _ = mounts()
    return _cgroup({**{c: "/" for c in v1}, "": "/"})


def read_int(path: str) -> int | None:
    """The first number of a one-value file (cgroup or /proc), None when it is missing or not one."""
    try:
        with open(path) as f:
            text = f.read().split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None


def _keyed(path: str) -> dict[str, int]:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(" ")
                try:
                    out[key] = int(value)
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def read(cg: Cgroup, *, machine: bool = False) -> Usage:
    """A sample of ``cg`` now. ``machine``: the root cgroup, whose v2 memory is /proc/meminfo's
    (the root has no memory.current)."""
    now = time.time_ns()
    cpu = None
    if cg.cpu:
        cpu = _keyed(os.path.join(cg.cpu, "cpu.stat")).get("usage_usec") if cg.v2 else \
            read_int(os.path.join(cg.cpu, "cpuacct.usage"))
        if cpu is not None and cg.v2:
            cpu *= 1000
    if not cg.memory:
        return Usage(now, cpu)
    if cg.v2:
        usage = read_int(os.path.join(cg.memory, "memory.current"))
        stat = _keyed(os.path.join(cg.memory, "memory.stat"))
        inactive, rss = stat.get("inactive_file", 0), stat.get("anon")
        faults, major = stat.get("pgfault"), stat.get("pgmajfault")
        limit = read_int(os.path.join(cg.memory, "memory.max"))  # "max": None
        if usage is None and machine:
            info = _meminfo()
            if "MemTotal" in info:
                usage = info["MemTotal"] - info.get("MemFree", 0)
                inactive = info.get("Inactive(file)", 0)
    else:
        usage = read_int(os.path.join(cg.memory, "memory.usage_in_bytes"))
        stat = _keyed(os.path.join(cg.memory, "memory.stat"))
        inactive, rss = stat.get("total_inactive_file", 0), stat.get("total_rss")
        faults, major = stat.get("total_pgfault"), stat.get("total_pgmajfault")
        limit = read_int(os.path.join(cg.memory, "memory.limit_in_bytes"))
        if limit is not None and limit >= UNLIMITED:
            limit = None
    if usage is None:
        return Usage(now, cpu)
    return Usage(now, cpu, usage, max(0, usage - inactive), rss, faults, major, limit)


def process_count(cg: Cgroup) -> int | None:
    return read_int(os.path.join(cg.pids, "pids.current")) if cg.pids else None
