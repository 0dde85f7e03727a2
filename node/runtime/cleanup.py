"""Remove everything one node's runtime made on the machine, whatever state it was left in:
containers and their conmons, runc's state, overlay mounts, cgroups, pod network namespaces.

For test fixtures and plane stop; the runtime itself never calls it (a restarted runtime adopts
what is running). Idempotent, and never fails for "already gone".
"""

from __future__ import annotations

import os
import shutil
import signal

from node.runtime import cgroups, mounts, runc

STATE_DIRS = ("containers", "sandboxes", "exits", "ipam")


def conmon_pids(runc_root: str) -> list[int]:
    """conmons driving runc with this runc root (their command line says --root=<runc_root>)."""
    want = f"--root={runc_root}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"conmon" and want in argv:
            found.append(int(name))
    return found


def cleanup(prefix: str, root: str | None = None, remove_state: bool = True) -> list[str]:
    """Kill and remove every container of the node `prefix` (e.g. ``kp3fa2-n0``): SIGKILL the
    cgroup tree ``/<prefix>`` (frozen meanwhile) and the conmons of ``/run/<prefix>``, ``runc
    delete --force`` each container, unmount what is mounted under `root`, remove the cgroups,
    the pod namespaces ``<prefix>-*`` (not the node's own, ``<prefix>``) and runc's state; with
    remove_state, the runtime's records under `root` too. Returns what could not be removed."""
    if not prefix or "/" in prefix or prefix in (".", ".."):
        raise ValueError(f"bad node prefix {prefix!r}")
    problems: list[str] = []
    runc_root = f"/run/{prefix}"
    if not cgroups.kill_tree(prefix):
        problems.append(f"processes still in cgroup /{prefix}")
    for pid in conmon_pids(runc_root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if os.path.isdir(runc_root):
        r = runc.Runc(runc_root)
        for c in r.list():
            try:
                r.delete(c["id"], force=True)
            except runc.RuncError as e:
                problems.append(str(e))
    if root and os.path.isdir(root):
        try:
            mounts.unmount_all(root)
        except OSError as e:
            problems.append(str(e))
    problems += [f"cgroup {d} is busy" for d in cgroups.remove_tree(prefix)]
    problems += _delete_pod_netns(prefix)
    shutil.rmtree(runc_root, ignore_errors=True)
    if root and remove_state and os.path.isdir(root):
        if mounts.mount_points(root):
            problems.append(f"mounts left under {root}: {mounts.mount_points(root)}")
        else:
            for d in STATE_DIRS:
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)
            try:
                os.unlink(os.path.join(root, "runtime.json"))
            except FileNotFoundError:
                pass
    return problems


def _delete_pod_netns(prefix: str) -> list[str]:
    """The pod namespaces ``<prefix>-*``, through node.network (the node's own namespace is the
    fabric's to remove)."""
    from node.network import cleanup_pods

    try:
        cleanup_pods(prefix)
    except Exception as e:  # noqa: BLE001 (reported; the rest is still removed)
        return [str(e)]
    return []
