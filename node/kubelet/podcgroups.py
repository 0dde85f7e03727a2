"""The pods' cgroups under the kubelet's --cgroup-root: ``<root>/kubepods[/<qos>]/pod<uid>`` in
every mounted hierarchy (the cgroupfs driver's names).

The runtime makes them (containerd's runc creates the sandbox's and containers' cgroups below the
cgroup_parent the kubelet sends, and the missing levels above) and removes its own levels when it
removes a container or sandbox; the pod level is the kubelet's, as upstream's pod container
manager: removed once the pod's runtime objects are gone, and at start for pods nobody knows
(cleanupOrphanedPodCgroups). Only empty directories are removed: a cgroup with processes stays.
"""

from __future__ import annotations

import os

QOS_LEVELS = ("", "burstable", "besteffort")  # Guaranteed pods sit directly under kubepods


def hierarchies() -> list[str]:
    """Mount points of the cgroup hierarchies (v1 controllers, named ones, the v2 unified)."""
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                if post.split(" ", 1)[0] in ("cgroup", "cgroup2"):
                    found.append(pre.split(" ")[4])
    except OSError:
        pass
    return found


def _kubepods(cgroup_root: str) -> str:
    root = cgroup_root.strip("/")
    return f"{root}/kubepods" if root else "kubepods"


def pod_dirs(cgroup_root: str, uid: str) -> list[str]:
    """The pod's cgroup directories that exist, in every hierarchy."""
    base = _kubepods(cgroup_root)
    return [d for h in hierarchies() for q in QOS_LEVELS
            if os.path.isdir(d := os.path.join(h, base, q, f"pod{uid}"))]


def pod_uids(cgroup_root: str) -> set[str]:
    """The uids of the pods that have a cgroup under the root (in any hierarchy)."""
    base = _kubepods(cgroup_root)
    uids = set()
    for h in hierarchies():
        for q in QOS_LEVELS:
            try:
                names = os.listdir(os.path.join(h, base, q))
            except OSError:
                continue
            uids.update(n[3:] for n in names if n.startswith("pod") and len(n) > 3)
    return uids


def remove_pod(cgroup_root: str, uid: str) -> list[str]:
    """rmdir the pod's cgroups bottom-up (what the runtime left below them included); the
    directories that stayed because processes are still in them."""
    busy = []
    for top in pod_dirs(cgroup_root, uid):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: w[0].count("/"), reverse=True):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError:
                busy.append(dirpath)
    return busy
