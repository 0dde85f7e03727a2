"""subPath mounts that cannot be steered outside their volume.

A container's ``volumeMounts[i].subPath`` names a path inside a volume, and
the volume's content belongs to the pod: a container could replace a directory
there with a symlink to ``/`` between our check and the runtime's bind. So, as
Kubernetes' subpath_linux.go does: resolve the path, check that it stays
inside the volume, open it component by component with O_NOFOLLOW from the
volume's root (a swap made after the check makes the open fail), and bind the
opened descriptor (``/proc/self/fd/N``) onto a kubelet-owned target,
``<pod dir>/volume-subpaths/<volume>/<container>/<index>``. The runtime mounts
that target, which no container can redirect. Missing directories are made the
same careful way (mkdirat + O_NOFOLLOW).
"""

from __future__ import annotations

import os
import stat

from node import mounts

_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class SubPathError(Exception):
    """Why a subPath was refused (for the log; users get upstream's short text)."""


def within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _open_components(base_fd: int, rel: str) -> int:
    """An O_PATH descriptor for ``rel`` under ``base_fd``, refusing any symlink on the way."""
    fd = os.dup(base_fd)
    try:
        for part in [p for p in rel.split("/") if p not in ("", ".")]:
            if part == "..":
                raise SubPathError(f"'..' in {rel!r}")
            child = os.open(part, _PATH_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise SubPathError(f"{rel!r} changed to a symlink while it was opened")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_base(base_real: str) -> int:
    return os.open(base_real, _PATH_FLAGS | os.O_DIRECTORY)


def safe_make_dir(base: str, sub: str, mode: int) -> None:
    """Create ``base/sub`` (and its missing parents) with ``mode``, never through
    a symlink that leaves ``base``."""
    base_real = os.path.realpath(base)
    parts = [p for p in os.path.normpath(sub).split("/") if p not in ("", ".")]
    existing = 0
    while existing < len(parts) and os.path.lexists(os.path.join(base, *parts[:existing + 1])):
        existing += 1
    prefix_real = os.path.realpath(os.path.join(base, *parts[:existing]))
    if not within(prefix_real, base_real):
        raise SubPathError(f"{os.path.join(base, *parts[:existing])} resolves outside {base_real}")
    base_fd = _open_base(base_real)
    try:
        fd = _open_components(base_fd, os.path.relpath(prefix_real, base_real))
    finally:
        os.close(base_fd)
    try:
        for part in parts[existing:]:
            try:
                os.mkdir(part, mode, dir_fd=fd)   # mkdirat takes an O_PATH directory
            except FileExistsError:
                pass
            child = os.open(part, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            os.chmod(f"/proc/self/fd/{fd}", mode)   # the mode as asked, whatever the umask
    finally:
        os.close(fd)


def bind_subpath(base: str, sub: str, target: str) -> str:
    """Bind ``base/sub`` onto ``target`` (made as a file or directory to match),
    after checking it stays inside ``base``; returns ``target``. A bind already
    at ``target`` of that same file is kept (a restarted container gets the same
    one); a bind of anything else there is replaced."""
    base_real = os.path.realpath(base)
    resolved = os.path.realpath(os.path.join(base, sub))
    if not within(resolved, base_real):
        raise SubPathError(f"subpath {resolved!r} not within volume path {base_real!r}")
    base_fd = _open_base(base_real)
    try:
        fd = _open_components(base_fd, os.path.relpath(resolved, base_real))
    finally:
        os.close(base_fd)
    try:
        st = os.fstat(fd)
        if mounts.fs_type(target) is not None:
            current = os.stat(target)
            if (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino):
                return target
            mounts.unmount(target)
        os.makedirs(os.path.dirname(target), mode=0o750, exist_ok=True)
        if stat.S_ISDIR(st.st_mode):
            if os.path.lexists(target) and not os.path.isdir(target):
                os.unlink(target)
            os.makedirs(target, mode=0o750, exist_ok=True)
        else:
            if os.path.isdir(target) and not os.path.islink(target):
                os.rmdir(target)
            if not os.path.lexists(target):
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640))
        mounts.bind(f"/proc/self/fd/{fd}", target)
    finally:
        os.close(fd)
    return target
