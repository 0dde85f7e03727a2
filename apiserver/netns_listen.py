"""The apiserver's listener inside a network namespace of the plane (``--bind-netns``).

Pods live in namespaces of their own and cannot reach the machine's 127.0.0.1. As kube-apiserver
on a control-plane machine of the cluster's network, this apiserver also listens on its
``--advertise-address`` (the `kubernetes` Service's endpoint) inside the plane's control-plane
namespace, with the same TLS and the same port. The socket is made by a short-lived thread that
has entered the namespace (node.network.netns.socket_in); the apiserver itself stays in the root
namespace. Clients reach it directly, so the apiserver sees each pod's own address (audit's
sourceIPs) and TLS runs end to end between the pod and the apiserver.

The namespace may come after the apiserver (the nodes are made once the plane is up) and may go
and come back (a plane stopped and started again): the listener looks every ``interval`` seconds,
binds once the namespace and its address exist, and closes its socket when the namespace it was
made in is no longer the one of that name (a socket would otherwise keep a deleted namespace
alive).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

log = logging.getLogger("apiserver.netns")

NETNS_DIR = "/run/netns"
DEFAULT_INTERVAL = 0.5


def namespace_id(netns: str) -> tuple[int, int] | None:
    """The identity of the namespace named ``netns`` now (device, inode of its nsfs file), None
    when there is none by that name."""
    try:
        st = os.stat(os.path.join(NETNS_DIR, netns))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def listening_socket_in(netns: str, host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port inside ``netns``. Raises OSError (EADDRNOTAVAIL while
    the address is not there yet, ENOENT when the namespace is not)."""
    from node.network.iproute import NetworkError
    from node.network.netns import socket_in  # the plane's namespace plumbing

    try:
        sock = socket_in(netns, socket.AF_INET, socket.SOCK_STREAM)
    except NetworkError as e:
        raise OSError(errno.ENOENT, str(e)) from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class NetnsListener:
    """Keeps ``server`` (a grpclite.GrpcServer) listening on host:port inside ``netns``, with
    ``ssl_context`` (the main listener's: a grpclite.tls.ServerTLS, or None)."""

    def __init__(self, server, netns: str, host: str, port: int, ssl_context,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.server, self.netns, self.host, self.port = server, netns, host, port
        self.ssl_context = ssl_context
        self.interval = interval
        self._listener = None       # the asyncio server on the namespace's socket
        self._bound_to = None       # namespace_id of the namespace it was made in
        self._waiting_said = False
        self.looks = 0              # checks made (tests wait on it)

    @property
    def listening(self) -> bool:
        return self._listener is not None

    async def check(self) -> None:
        """One look: close a socket whose namespace went, make one where there is none."""
        self.looks += 1
        current = namespace_id(self.netns)
        if self._listener is not None and current != self._bound_to:
            self.server.unlisten(self._listener)
            self._listener, self._bound_to = None, None
            log.info("namespace %s went: stopped serving on %s:%d there", self.netns, self.host, self.port)
        if self._listener is not None or current is None:
            return
        try:
            sock = await asyncio.get_running_loop().run_in_executor(
                None, listening_socket_in, self.netns, self.host, self.port)
        except OSError as e:
            if not self._waiting_said:
                why = "the address is not there yet" if e.errno == errno.EADDRNOTAVAIL else str(e)
                log.info("cannot listen on %s:%d in namespace %s yet (%s); trying again every %.1f s",
                         self.host, self.port, self.netns, why, self.interval)
                self._waiting_said = True
            return
        self._listener = await self.server.listen_socket(sock, self.ssl_context)
        self._bound_to = current
        self._waiting_said = False
        log.info("serving on %s:%d in namespace %s too", self.host, self.port, self.netns)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except Exception:  # keep looking: the main listener is unaffected
                log.exception("namespace listener in %s", self.netns)
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
        if self._listener is not None:
            self.server.unlisten(self._listener)
            self._listener = None
