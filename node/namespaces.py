"""New network, UTS and IPC namespaces made in-process and pinned by a bind mount, as
``ip netns add`` and ``unshare --net=FILE`` make them, without starting either program.

Why in-process: a pod sandbox needs a network namespace and IPC/UTS namespaces (its hostname
set), and a process per namespace tool (``ip netns add``, ``unshare``, ``hostname``) is a large
share of the CPU a pod start costs. These three kinds of namespace belong to a thread, not to a
process: ``unshare(2)`` on one thread moves that thread alone. So a short-lived thread unshares,
sets the hostname, bind-mounts its ``/proc/thread-self/ns/<kind>`` onto the pin files (the mount
keeps the namespace alive with no process in it), goes back to its old namespaces with
``setns(2)`` and ends. The caller's threads never leave their namespaces.

The bind mounts are made in the caller's mount namespace, where ``ip`` would make them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Callable

from node import mounts

CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
FLAGS = {"net": CLONE_NEWNET, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC}
HOST_NAME_MAX = 64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)} (needs root: CAP_SYS_ADMIN)")


def on_fresh_thread(fn: Callable[[], object]) -> object:
    """Run ``fn`` on a new thread that ends right after; its result, or its exception raised
    here."""
    result: dict = {}

    def body() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # handed to the caller
            result["error"] = e

    t = threading.Thread(target=body, name="namespaces", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def new_pinned(pins: dict[str, str], hostname: str | None = None) -> None:
    """New namespaces of the kinds in ``pins`` ("net", "uts", "ipc"), each bind-mounted on its
    pin path (an existing file); the UTS one named ``hostname``. On failure nothing stays
    mounted on the pins (the files are the caller's)."""
    for kind in pins:
        if kind not in FLAGS:
            raise ValueError(f"namespace kind {kind!r}: one of {sorted(FLAGS)}")
    if hostname is not None:
        name = hostname.encode()
        if not name or len(name) > HOST_NAME_MAX:
            raise ValueError(f"hostname {hostname!r}: 1 to {HOST_NAME_MAX} bytes")
    flags = 0
    for kind in pins:
        flags |= FLAGS[kind]

    def body() -> None:
        homes = {k: os.open(f"/proc/thread-self/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in pins}
        mounted: list[str] = []
        try:
            _check(_libc.unshare(flags), "unshare(" + "|".join(sorted(pins)) + ")")
            try:
                if hostname is not None:
                    _check(_libc.sethostname(name, len(name)), f"sethostname({hostname})")
                for kind, pin in pins.items():
                    mounts.bind(f"/proc/thread-self/ns/{kind}", pin)
                    mounted.append(pin)
            except BaseException:
                for pin in mounted:
                    mounts.unmount(pin)
                raise
            finally:
                # Back home before the thread ends; should this fail the thread still ends now.
                for kind, fd in homes.items():
                    _check(_libc.setns(fd, FLAGS[kind]), f"setns back to the caller's {kind} namespace")
        finally:
            for fd in homes.values():
                os.close(fd)

    on_fresh_thread(body)


def make_shared_dir(path: str) -> None:
    """``path`` a mount point with shared propagation, so that namespaces pinned under it are
    seen from mount namespaces made later (as ``ip netns`` prepares /run/netns)."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    try:
        mounts.mount("none", path, None, mounts.MS_SHARED | mounts.MS_REC)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: not a mount point yet
            raise
        mounts.mount(path, path, None, mounts.MS_BIND | mounts.MS_REC)
        mounts.mount("none", path, None, mounts.MS_SHARED | mounts.MS_REC)


def add_named_netns(directory: str, name: str) -> None:
    """``ip netns add NAME`` done in-process: ``<directory>/<name>`` pins a new network
    namespace. FileExistsError when that name is taken."""
    make_shared_dir(directory)
    path = os.path.join(directory, name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    try:
        new_pinned({"net": path})
    except BaseException:
        os.unlink(path)
        raise


def delete_named_netns(directory: str, name: str) -> None:
    """``ip netns del NAME`` done in-process: the pin unmounted (detached) and its file removed;
    the kernel frees the namespace once no process or handle holds it."""
    path = os.path.join(directory, name)
    mounts.unmount(path)
    os.unlink(path)
