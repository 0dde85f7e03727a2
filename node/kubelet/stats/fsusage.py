"""Filesystem figures in the Summary's FsStats terms: a filesystem's capacity and free space
(statvfs); what one directory holds on it is node.disk_usage's."""

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
