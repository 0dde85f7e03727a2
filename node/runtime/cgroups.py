"""The node's cgroup trees (v1, one per mounted hierarchy): ``/<node prefix>/<sandbox>/<container>``.

runc makes and removes a container's own cgroup; the sandbox and node levels above it are ours
to remove, and a cleanup must empty a whole tree whatever runc left (a runtime killed mid-way):
freeze it so that nothing forks while being killed, SIGKILL every task, thaw, remove the
directories bottom-up.
"""

from __future__ import annotations

import os
import signal
import time

CGROUP_ROOT = "/sys/fs/cgroup"


def hierarchies() -> list[str]:
    """Mount points of the cgroup hierarchies (v1 controllers, named ones, the v2 unified)."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fstype = post.split(" ", 1)[0]
                if fstype in ("cgroup", "cgroup2"):
                    out.append(pre.split(" ")[4])
    except OSError:
        pass
    return out


def tree(rel: str) -> list[str]:
    """Every directory of the relative cgroup path `rel` in every hierarchy, deepest first."""
    rel = rel.strip("/")
    if not rel:
        raise ValueError("refusing the root cgroup")
    found = []
    for h in hierarchies():
        top = os.path.join(h, rel)
        if not os.path.isdir(top):
            continue
        for dirpath, _dirs, _files in os.walk(top):
            found.append(dirpath)
    found.sort(key=lambda d: d.count("/"), reverse=True)
    return found


def tasks(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _set_freezer(rel: str, state: str) -> None:
    path = os.path.join(CGROUP_ROOT, "freezer", rel.strip("/"), "freezer.state")
    try:
        with open(path, "w") as f:
            f.write(state)
    except OSError:
        pass


def kill_tree(rel: str, timeout: float = 10.0) -> bool:
    """SIGKILL every process in the tree `rel` (frozen meanwhile, so none escapes by forking);
    True once the tree holds no process. Repeated over a fresh listing until the tree is empty:
    a runtime still starting a container when this begins can add a cgroup or a process after
    the first pass (a runc that was mid-create)."""
    deadline = time.monotonic() + timeout
    while True:
        dirs = tree(rel)
        pids = [pid for d in dirs for pid in tasks(d)]
        if not pids:
            return True
        if time.monotonic() >= deadline:
            return False
        _set_freezer(rel, "FROZEN")
        try:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            _set_freezer(rel, "THAWED")
        time.sleep(0.02)


def remove_tree(rel: str, timeout: float = 5.0) -> list[str]:
    """rmdir the tree `rel` bottom-up in every hierarchy; the directories that stayed (busy)."""
    left = tree(rel)
    deadline = time.monotonic() + timeout
    while left:
        busy = []
        for d in left:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                busy.append(d)
        left = busy
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return left
