"""Host-local IP address management for one node's podCIDR, in files, as the CNI host-local
plugin keeps it: one file per allocated address (named by the address, holding the sandbox id),
plus ``last_reserved_ip``. Files survive a runtime restart, so a restarted runtime knows which
addresses its sandboxes hold without any other state.

Allocation walks the range round-robin from the last address handed out, as host-local does, so
a just-released address is the last to be reused: connections and ARP entries still aimed at a
deleted pod do not land on its successor at once. An ``flock`` on ``lock`` serializes
allocations across threads and processes (two runtimes sharing a directory, or a runtime and its
restarted self); each address file is also created with O_EXCL, so a crashed writer can never
make two sandboxes share one address. Beside the address files, a symlink ``id.<sandbox id>`` ->
address makes "which address does this sandbox hold" one readlink instead of reading every file;
the address files stay the truth (a link whose file does not name the sandbox is ignored, and
``release`` scans the files).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
from contextlib import contextmanager
from typing import Iterator

from .iproute import NetworkError

LAST_RESERVED = "last_reserved_ip"
LOCK = "lock"
INDEX = "id."  # + sandbox id: a symlink to the address it holds, so a lookup reads one link
_SANDBOX_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


class IpamExhausted(NetworkError):
    pass


def _check_id(sandbox_id: str) -> None:
    """Sandbox ids become file names here: nothing that could leave the directory."""
    if not isinstance(sandbox_id, str) or not _SANDBOX_ID_RE.fullmatch(sandbox_id):
        raise ValueError(f"bad sandbox id {sandbox_id!r}: 1-200 letters, digits, '_', '.', '-'")


class HostLocalIpam:
    """The addresses of ``pod_cidr`` (network, broadcast and the gateway excluded; the gateway is
    the first host address) handed out to sandbox ids, recorded under ``state_dir``."""

    def __init__(self, state_dir: str, pod_cidr: str | None = None) -> None:
        """Without ``pod_cidr`` only ``release``/``lookup`` work (teardown needs no range)."""
        self.dir = state_dir
        self.net = self.gateway = None
        self.pool: range = range(0)
        if pod_cidr is not None:
            self.net = ipaddress.IPv4Network(pod_cidr, strict=False)
            if self.net.num_addresses < 4:
                raise ValueError(f"podCIDR {pod_cidr} is too small for a gateway and a pod")
            # The pool as a range of integers: a list of IPv4Address objects for a /24 took
            # ~0.7 ms to build, at every attach and detach.
            first = int(self.net.network_address) + 1
            self.gateway = ipaddress.IPv4Address(first)
            self.pool = range(first + 1, int(self.net.broadcast_address))
        os.makedirs(self.dir, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _owners(self) -> dict[str, str]:
        """address -> sandbox id, for every address file in the directory."""
        out = {}
        for name in os.listdir(self.dir):
            try:
                ipaddress.IPv4Address(name)
            except ValueError:
                continue
            try:
                with open(os.path.join(self.dir, name)) as f:
                    out[name] = f.read().strip()
            except FileNotFoundError:
                pass
        return out

    def _indexed(self, sandbox_id: str) -> ipaddress.IPv4Address | None:
        """The address the index link of ``sandbox_id`` names, if its file agrees."""
        _check_id(sandbox_id)
        try:
            addr = str(ipaddress.IPv4Address(os.readlink(os.path.join(self.dir, INDEX + sandbox_id))))
            with open(os.path.join(self.dir, addr)) as f:
                if f.read().strip() == sandbox_id:
                    return ipaddress.IPv4Address(addr)
        except (OSError, ValueError):
            pass
        return None

    def allocate(self, sandbox_id: str) -> ipaddress.IPv4Address:
        """The address of ``sandbox_id``: the one it already holds, else the next free one."""
        if self.net is None:
            raise ValueError("allocate needs the podCIDR")
        _check_id(sandbox_id)
        with self._locked():
            held = self._indexed(sandbox_id)
            if held is not None:
                if held in self.net:
                    return held
                os.unlink(os.path.join(self.dir, str(held)))  # from an earlier podCIDR
            taken = set(os.listdir(self.dir))
            start = 0
            try:
                with open(os.path.join(self.dir, LAST_RESERVED)) as f:
                    last = ipaddress.IPv4Address(f.read().strip())
                if int(last) in self.pool:
                    start = int(last) - self.pool[0] + 1
            except (FileNotFoundError, ValueError):
                pass
            n = len(self.pool)
            link = os.path.join(self.dir, INDEX + sandbox_id)
            for k in range(n):
                addr = ipaddress.IPv4Address(self.pool[(start + k) % n])
                if str(addr) in taken:
                    continue
                # The link first: a crash between the two leaves a dangling link (ignored, and
                # replaced by the next allocate), never an address file nothing points to.
                try:
                    os.unlink(link)
                except FileNotFoundError:
                    pass
                os.symlink(str(addr), link)
                try:
                    fd = os.open(os.path.join(self.dir, str(addr)),
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "w") as f:
                    f.write(sandbox_id)
                # Written in place: a torn write only makes the next walk start at the range's
                # beginning, which the address files keep correct.
                with open(os.path.join(self.dir, LAST_RESERVED), "w") as f:
                    f.write(str(addr))
                return addr
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass
        raise IpamExhausted(f"allocate an address in {self.net} for {sandbox_id}",
                            f"all {n} addresses are taken",
                            f"delete pods on this node, or check {self.dir} for addresses "
                            "held by sandboxes that no longer exist")

    def release(self, sandbox_id: str) -> list[str]:
        """Free every address ``sandbox_id`` holds; return them (empty when it held none)."""
        _check_id(sandbox_id)
        with self._locked():
            link = os.path.join(self.dir, INDEX + sandbox_id)
            held = self._indexed(sandbox_id)
            if held is not None:
                os.unlink(os.path.join(self.dir, str(held)))
                os.unlink(link)
                return [str(held)]
            freed = []  # no index link: look through every file, to be sure
            for addr, owner in self._owners().items():
                if owner == sandbox_id:
                    try:
                        os.unlink(os.path.join(self.dir, addr))
                    except FileNotFoundError:
                        pass
                    freed.append(addr)
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass
            return freed

    def lookup(self, sandbox_id: str) -> ipaddress.IPv4Address | None:
        held = self._indexed(sandbox_id)
        if held is not None:
            return held
        for addr, owner in self._owners().items():
            if owner == sandbox_id:
                return ipaddress.IPv4Address(addr)
        return None

    def allocations(self) -> dict[str, str]:
        return self._owners()
