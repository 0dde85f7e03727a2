"""Remove everything one node's runtime made on the machine, whatever state it was left in:
containers and their conmons, runc's state, overlay mounts, cgroups, pod network namespaces.

For test fixtures and plane stop; the runtime itself never calls it (a restarted runtime adopts
what is running). Idempotent, and never fails for "already gone". A runtime records its root in
``/run/<node prefix>.runtime-root``, so a cleanup needs only the prefix: a node's
(``kp3fa2-n0``), or a plane's (``kp3fa2``: every node runtime of the plane).
"""

from __future__ import annotations

import os
import re
import shutil
import signal

from node import mounts
from node.runtime import cgroups, runc

STATE_DIRS = ("containers", "sandboxes", "exits", "ipam")
RUN_DIR = "/run"
PLANE_PREFIX = re.compile(r"kp[0-9a-f]{4}")  # a plane's id (ISSUE 18's names); a node's is <plane>-n<i>
ROOT_MARKER = ".runtime-root"


def marker_path(prefix: str) -> str:
    return os.path.join(RUN_DIR, prefix + ROOT_MARKER)


def record_root(prefix: str, root: str) -> None:
    """Note where the node's runtime keeps its state, for a cleanup given only the prefix."""
    tmp = marker_path(prefix) + ".tmp"
    with open(tmp, "w") as f:
        f.write(os.path.abspath(root))
    os.replace(tmp, marker_path(prefix))


def recorded_root(prefix: str) -> str | None:
    try:
        with open(marker_path(prefix)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def node_prefixes(prefix: str) -> list[str]:
    """The node runtimes below a plane prefix: ``<prefix>-*`` names of runtime markers, runc
    roots under /run and top-level cgroups."""
    found = set()
    lead = prefix + "-"
    for name in os.listdir(RUN_DIR):
        if name.startswith(lead):
            if name.endswith(ROOT_MARKER):
                found.add(name[:-len(ROOT_MARKER)])
            elif os.path.isdir(os.path.join(RUN_DIR, name)) and "." not in name:
                found.add(name)
    for h in cgroups.hierarchies():
        try:
            found.update(n for n in os.listdir(h) if n.startswith(lead) and os.path.isdir(os.path.join(h, n)))
        except OSError:
            pass
    return sorted(found)


def pids_where(match) -> list[int]:
    """The processes whose command line (a list of bytes, never empty) ``match`` accepts."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0] and match(argv):
            found.append(int(name))
    return found


def conmon_pids(runc_root: str) -> list[int]:
    """conmons driving runc with this runc root (their command line says --root=<runc_root>)."""
    want = f"--root={runc_root}".encode()
    return pids_where(lambda argv: os.path.basename(argv[0]) == b"conmon" and want in argv)


def cleanup(prefix: str, root: str | None = None, remove_state: bool = True) -> list[str]:
    """Kill and remove every container of the node `prefix` (e.g. ``kp3fa2-n0``): SIGKILL the
    cgroup tree ``/<prefix>`` (frozen meanwhile) and the conmons of ``/run/<prefix>``, ``runc
    delete --force`` each container, unmount what is mounted under `root` (default: the root the
    runtime recorded), remove the cgroups, the pod namespaces ``<prefix>-*`` (not the node's own,
    ``<prefix>``) and runc's state; with remove_state, the runtime's records under `root` too.
    A plane prefix (``kp3fa2``) cleans every node runtime of the plane. Returns what could not be
    removed ([] when everything is gone)."""
    if not prefix or "/" in prefix or prefix in (".", "..") or prefix.startswith("."):
        raise ValueError(f"bad node prefix {prefix!r}")
    problems: list[str] = []
    if PLANE_PREFIX.fullmatch(prefix):  # a plane's: each of its nodes (its fabric is node.network's)
        for node in node_prefixes(prefix):
            problems += cleanup(node, None, remove_state)
        return problems
    if root is None:
        root = recorded_root(prefix)
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
            mounts.unmount_all_under(root)
        except OSError as e:
            problems.append(str(e))
    problems += [f"cgroup {d} is busy" for d in cgroups.remove_tree(prefix)]
    problems += _delete_pod_netns(prefix)
    shutil.rmtree(runc_root, ignore_errors=True)
    try:
        os.unlink(marker_path(prefix))
    except FileNotFoundError:
        pass
    if root and remove_state and os.path.isdir(root):
        if mounts.mounts_under(root):
            problems.append(f"mounts left under {root}: {mounts.mounts_under(root)}")
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
