"""Doing network work inside a named namespace from a Python process that stays in its own.

The kubelet runs in the root namespace, as a real one does, yet its probes must reach pod IPs
that exist only inside a node's namespace. A socket belongs to the namespace of the thread that
created it, for its whole life; so a short-lived thread enters the namespace (``setns(2)``
through ctypes: Python 3.11 has no ``os.setns``), creates the socket, and exits. The caller then
connects and talks on that socket from its own thread. No thread of the caller's process is left
in another namespace: the helper thread switches back before it ends, and ends right after.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

from .iproute import NETNS_DIR, NetworkError

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetworkError(f"setns({what}, CLONE_NEWNET)", os.strerror(err),
                           "needs root (CAP_SYS_ADMIN)")


def netns_path(netns: str) -> str:
    """A name as ``ip netns`` knows it, or a path (``/proc/PID/ns/net``) used as given."""
    return netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)


def run_in(netns: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` on a fresh thread that has entered ``netns``; return its
    result or raise its exception in the caller. Keep ``fn`` short: it should create what must
    belong to the namespace (a socket, an open /proc/sys file) and return."""
    path = netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetworkError(f"open {path}", "no such network namespace",
                           "was it created (ip netns add) and not yet deleted?") from None
    result: dict[str, Any] = {}

    def body() -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, path)
            try:
                result["value"] = fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller
                result["error"] = e
            finally:
                # Back home before the thread ends; should this fail the thread still ends at once.
                _setns(home, "the caller's namespace")
        except BaseException as e:
            result.setdefault("error", e)
        finally:
            os.close(home)

    try:
        t = threading.Thread(target=body, name=f"netns:{netns}", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(target)
    if "error" in result:
        raise result["error"]
    return result["value"]


def socket_in(netns: str, family: int = socket.AF_INET,
              type: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket belonging to ``netns``; use it from any thread."""
    return run_in(netns, socket.socket, family, type)


def connect_in(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``host:port`` as seen from inside ``netns`` (for tcpSocket probes and
    anything the kubelet sends to a pod IP). ``host`` should be an IP address: a name would be
    resolved with the caller's resolver, not the namespace's. Raises OSError (refused, timed out,
    unreachable) as ``socket.create_connection`` does."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    err: OSError | None = None
    for family, stype, proto, _, addr in infos:
        sock = socket_in(netns, family, stype)
        try:
            sock.settimeout(timeout)
            sock.connect(addr)
            return sock
        except OSError as e:
            sock.close()
            err = e
    raise err if err is not None else OSError(f"no address for {host}")


@dataclass(frozen=True)
class HttpResult:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


class _ConnectionIn(http.client.HTTPConnection):
    def __init__(self, netns: str, host: str, port: int | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        self.sock = connect_in(self._netns, self.host, self.port, self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def http_get_in(netns: str, url: str, timeout: float, headers: dict[str, str] | None = None,
                max_body: int = 10 * 1024) -> HttpResult:
    """GET ``url`` (http only) from inside ``netns``, as the kubelet's httpGet probe does: the
    body is read up to ``max_body`` bytes (the kubelet keeps 10 KiB), redirects are not
    followed. Raises OSError for connection failures and timeouts."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"http_get_in takes http://HOST[:PORT]/PATH urls, not {url!r}")
    conn = _ConnectionIn(netns, u.hostname, u.port or 80, timeout)
    try:
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        body = resp.read(max_body)
        return HttpResult(resp.status, resp.reason, {k.lower(): v for k, v in resp.getheaders()},
                          body)
    finally:
        conn.close()


def write_sysctl_in(netns: str, key: str, value: str) -> None:
    """Set a per-namespace network sysctl (``net.ipv4.ip_forward``) inside ``netns`` only: a file
    under /proc/sys/net opened by a thread in that namespace speaks for that namespace."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w") as f:
            f.write(value)

    run_in(netns, write)


def read_sysctl_in(netns: str, key: str) -> str:
    path = "/proc/sys/" + key.replace(".", "/")

    def read() -> str:
        with open(path) as f:
            return f.read().strip()

    return run_in(netns, read)
