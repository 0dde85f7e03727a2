"""What a directory holds on its filesystem: allocated bytes and inodes, as `du` counts them.

One walk for the runtime (a container's writable layer, CRI's ContainerStats) and the kubelet
(logs, emptyDir volumes, the Summary's FsStats).
"""

from __future__ import annotations

import os


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
