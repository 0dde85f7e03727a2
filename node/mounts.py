"""mount(2) and umount2(2) through ctypes, and the mount table of this process.

The runtime mounts container root filesystems (overlays) and sandbox /dev/shm;
the kubelet mounts tmpfs for memory-backed volumes and binds subPaths. Calling
the syscalls directly (no ``mount`` process) keeps that cheap and lets a
bind's source be an O_PATH descriptor (``/proc/self/fd/N``), which is how a
subPath is pinned against symlink swaps. Needs CAP_SYS_ADMIN (root).
"""

from __future__ import annotations

import ctypes
import errno
import os

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

# The process's own symbols (libc among them): find_library("c") would run ``ldconfig -p``.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2); OSError with the path on failure."""
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}", target)


_noswap = [True]   # cleared when the kernel refuses tmpfs's noswap (before Linux 6.4)


def mount_tmpfs(target: str, *, size: int | None = None, mode: int = 0o777, noexec: bool = False) -> None:
    """A tmpfs at ``target`` (created if missing), with ``noswap`` where the kernel has
    it, as Kubernetes mounts memory-backed volumes: a Secret's pages then never go to a
    swap device."""
    os.makedirs(target, exist_ok=True)
    flags = MS_NOSUID | MS_NODEV | (MS_NOEXEC if noexec else 0)
    options = [f"mode={mode:o}"] + ([f"size={size}"] if size else [])
    if _noswap[0]:
        try:
            mount("tmpfs", target, "tmpfs", flags, ",".join(options + ["noswap"]))
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _noswap[0] = False
    mount("tmpfs", target, "tmpfs", flags, ",".join(options))


def mount_overlay(lower: str, upper: str, work: str, target: str) -> None:
    """An overlay of the read-only ``lower`` (an image's rootfs, shared by its containers)
    and a per-container ``upper``, so a container's writes stay its own."""
    for d in (upper, work, target):
        os.makedirs(d, exist_ok=True)
    mount("overlay", target, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")


def bind(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND)


def unmount(target: str, *, lazy: bool = True) -> None:
    """umount2(2), detached by default (busy mounts go at once from the tree);
    a target that is not (or no longer) a mount point is not an error."""
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)
    if _libc.umount2(_b(target), flags) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise OSError(err, f"unmount {target}: {os.strerror(err)}", target)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process sees, in mount order."""
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            rows.append((_unescape(fields[4]), fields[sep + 1]))
    return rows


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path`` (resolved), deepest first: the order to unmount in."""
    base = os.path.realpath(path)
    prefix = base.rstrip("/") + "/"
    found = {point for point, _ in mount_table() if point == base or point.startswith(prefix)}
    return sorted(found, key=lambda p: (p.count("/"), p), reverse=True)


def fs_type(path: str) -> str | None:
    """The filesystem type mounted exactly at ``path``, None when it is no mount point."""
    real = os.path.realpath(path)
    kind = None
    for point, fstype in mount_table():
        if point == real:
            kind = fstype   # the last one mounted there is the one seen
    return kind


def unmount_all_under(path: str) -> None:
    """Detach every mount at or below ``path``, deepest first (repeated while some remain,
    as a detached parent can reveal nothing new but stacked mounts need one call each)."""
    for _ in range(64):
        points = mounts_under(path)
        if not points:
            return
        for point in points:
            unmount(point)
    remaining = mounts_under(path)
    if remaining:
        raise OSError(errno.EBUSY, f"mounts remain under {path}: {remaining}", path)
