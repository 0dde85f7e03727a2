"""Filesystem figures in the Summary's FsStats terms: a filesystem's capacity and free space
(statvfs), and what one directory or file holds on it (allocated blocks and inodes, as
cAdvisor's and the kubelet's du do)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class FsUsage:
    time_ns: int
    available: int | None = None
    capacity: int | None = None
    used: int | None = None
    inodes_free: int | None = None
    inodes: int | None = None
    inodes_used: int | None = None


def filesystem(path: str, used: int | None = None, inodes_used: int | None = None) -> FsUsage | None:
    """The filesystem holding ``path``; ``used``/``inodes_used``: what a task of it uses (None:
    the whole filesystem's use)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if used is None:
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
    if inodes_used is None:
        inodes_used = st.f_files - st.f_ffree
    return FsUsage(time.time_ns(), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, used,
                   st.f_ffree, st.f_files, inodes_used)


def du(path: str) -> tuple[int, int]:
    """(bytes allocated, inodes) under ``path``, not following links or crossing into mounts
    below it (a volume's subPath binds are another volume's)."""
    try:
        top = os.lstat(path)
    except OSError:
        return 0, 0
    used, inodes = top.st_blocks * 512, 1
    stack = [path] if os.path.isdir(path) and not os.path.islink(path) else []
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != top.st_dev:
                    continue
                used += st.st_blocks * 512
                inodes += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return used, inodes
