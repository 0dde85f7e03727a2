"""Container root filesystems: an overlay of the image's unpacked rootfs (read-only, shared by
every container of the image) and a per-container upper directory, so a container's writes stay
its own and vanish with it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH = 2


class MountError(OSError):
    pass


def mount_overlay(lower: str, upper: str, work: str, target: str) -> None:
    for d in (upper, work, target):
        os.makedirs(d, exist_ok=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    if _libc.mount(b"overlay", target.encode(), b"overlay", 0, opts) != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount overlay on {target} (lower {lower}): {os.strerror(err)}")


def mount_tmpfs(target: str, options: str) -> None:
    os.makedirs(target, exist_ok=True)
    flags = 0x2 | 0x4 | 0x8  # MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(b"tmpfs", target.encode(), b"tmpfs", flags, options.encode()) != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def is_mounted(path: str) -> bool:
    path = os.path.realpath(path)
    return path in mount_points(path)


def mount_points(under: str) -> list[str]:
    """Mount points at or below `under`, deepest first (from /proc/self/mountinfo)."""
    under = os.path.realpath(under).rstrip("/")
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split(" ")[4].replace("\\040", " ")
                if mp == under or mp.startswith(under + "/"):
                    out.append(mp)
    except OSError:
        pass
    out.sort(key=lambda p: p.count("/"), reverse=True)
    return out


def unmount(path: str) -> None:
    """Lazily unmount `path`; a path not mounted is fine."""
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise MountError(err, f"umount {path}: {os.strerror(err)}")


def unmount_all(under: str) -> None:
    for mp in mount_points(under):
        unmount(mp)
