"""Can this machine run real nodes? `missing()` lists what it lacks, in words a user can act on.

Real nodes need root (network namespaces, mounts, cgroups), iproute2, Debian's runc and conmon,
busybox-static (the base image), overlayfs, and writable cgroup v1 controllers (runc drives
them; crun refuses hybrid hierarchies). `make run` falls back to hollow nodes and says why when
something is missing; the data-plane tests skip with the same words.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BINARIES = {"ip": "iproute2", "runc": "runc", "conmon": "conmon", "busybox": "busybox-static"}
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("memory", "cpu", "pids", "freezer")


def missing() -> list[str]:
    """What this machine lacks for real nodes; empty when it has everything."""
    if os.geteuid() != 0:
        return ["root (network namespaces, mounts and cgroups need it)"]
    lacks = [f"{binary} (Debian package {package}; `make node-deps` installs it)"
             for binary, package in BINARIES.items() if shutil.which(binary) is None]
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            lacks.append("overlayfs in the kernel")
    except OSError:
        lacks.append("/proc/filesystems (is /proc mounted?)")
    probe = f"kpcheck-{os.getpid()}"
    for controller in CGROUP_CONTROLLERS:
        try:
            (CGROUP_ROOT / controller / probe).mkdir()
            (CGROUP_ROOT / controller / probe).rmdir()
        except OSError as exc:
            lacks.append(f"a writable cgroup v1 {controller} controller at {CGROUP_ROOT / controller} ({exc.strerror})")
    if shutil.which("ip") is not None:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if made.returncode != 0:
            lacks.append(f"network namespaces (`ip netns add` said: {made.stderr.strip()})")
        else:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return lacks


def why_not() -> str | None:
    """None when real nodes can run here, else one sentence saying why not."""
    lacks = missing()
    return "this machine lacks " + "; ".join(lacks) if lacks else None


if __name__ == "__main__":
    reason = why_not()
    print(reason or "real nodes can run here")
    raise SystemExit(1 if reason else 0)
