"""node.namespaces: namespaces made in-process on a short-lived thread and pinned by bind mounts,
without moving any thread of the caller (needs root)."""

from __future__ import annotations

import ctypes
import os
import socket

import pytest

from node import mounts, namespaces
from node import network
from node.network import iproute

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (unshare, mount)")

_libc = ctypes.CDLL(None, use_errno=True)


def _ns_ids() -> dict[str, str]:
    return {k: os.readlink(f"/proc/thread-self/ns/{k}") for k in ("net", "uts", "ipc")}


def _in(pin: str, kind: str, fn):
    """fn() called on a thread that entered the pinned namespace."""
    def body():
        home = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY)
        fd = os.open(pin, os.O_RDONLY)
        try:
            assert _libc.setns(fd, namespaces.FLAGS[kind]) == 0, os.strerror(ctypes.get_errno())
            try:
                return fn()
            finally:
                assert _libc.setns(home, namespaces.FLAGS[kind]) == 0
        finally:
            os.close(fd)
            os.close(home)
    return namespaces.on_fresh_thread(body)


def test_ipc_uts_pinned_with_hostname_and_the_caller_stays_home(tmp_path):
    before, host = _ns_ids(), socket.gethostname()
    pins = {k: str(tmp_path / k) for k in ("ipc", "uts")}
    for p in pins.values():
        open(p, "w").close()
    namespaces.new_pinned(pins, "pod-a")
    try:
        assert _ns_ids() == before and socket.gethostname() == host
        assert mounts.fs_type(pins["uts"]) is not None and mounts.fs_type(pins["ipc"]) is not None
        assert _in(pins["uts"], "uts", socket.gethostname) == "pod-a"
        assert _in(pins["uts"], "uts", lambda: os.readlink("/proc/thread-self/ns/uts")) != before["uts"]
        assert _in(pins["ipc"], "ipc", lambda: os.readlink("/proc/thread-self/ns/ipc")) != before["ipc"]
    finally:
        for p in pins.values():
            mounts.unmount(p)
    assert mounts.mounts_under(str(tmp_path)) == []


def test_a_refused_hostname_leaves_nothing_mounted(tmp_path):
    pins = {k: str(tmp_path / k) for k in ("ipc", "uts")}
    for p in pins.values():
        open(p, "w").close()
    with pytest.raises(ValueError, match="1 to 64 bytes"):
        namespaces.new_pinned(pins, "x" * 65)
    assert mounts.mounts_under(str(tmp_path)) == []


def test_named_netns_added_and_deleted_in_process():
    name = network.new_prefix() + "-t"
    before = _ns_ids()
    iproute.create_netns(name)
    try:
        assert iproute.netns_exists(name) and _ns_ids() == before
        inside = _in(os.path.join(iproute.NETNS_DIR, name), "net",
                     lambda: os.readlink("/proc/thread-self/ns/net"))
        assert inside != before["net"]
        iproute.create_netns(name)  # an existing name is kept
        with pytest.raises(FileExistsError):
            namespaces.add_named_netns(iproute.NETNS_DIR, name)
    finally:
        iproute.delete_netns(name)
    assert not iproute.netns_exists(name)
    iproute.delete_netns(name)  # absent: fine
