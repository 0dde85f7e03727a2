"""The apiserver's way onto the pods' network: pods/ and services/NAME/proxy, and admission
webhooks named by a Service.

kube-apiserver runs on a machine of the cluster's network and dials pod IPs from there. This one
runs in the root namespace, where no pod IP is routed; its machine on the plane's network is the
control-plane namespace it also listens in (``--bind-netns``, ``<prefix>-cp``), which has the
fabric's addresses and a route to every real node's podCIDR and nothing else. Each connection's
socket is made inside that namespace (a short-lived thread enters it: node.network.netns) and
used from the event loop here, so the apiserver itself never leaves the root namespace and can
reach only what that namespace routes.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

CONNECT_TIMEOUT = 5.0  # as the kubelet's dial


def _insecure_context() -> ssl.SSLContext:
    # upstream's proxy transport to pods and services: TLS without verifying the pod's certificate
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class PodNetwork:
    """``netns``: the network namespace to dial from; "" when the apiserver has none (then every
    dial fails with ENETUNREACH, as from a machine with no route to the pods)."""

    def __init__(self, netns: str = "") -> None:
        self.netns = netns
        self._tls: ssl.SSLContext | None = None

    async def dial(self, ip: str, port: int) -> socket.socket:
        """A TCP socket connected to ``ip:port`` from the namespace (non-blocking, for the event
        loop). OSError as the kernel refuses it (ECONNREFUSED, ENETUNREACH, ...)."""
        if not self.netns:
            raise OSError(errno.ENETUNREACH, "network is unreachable")
        from node.network.iproute import NetworkError
        from node.network.netns import socket_in  # the plane's namespace plumbing

        try:
            sock = await asyncio.to_thread(socket_in, self.netns, socket.AF_INET, socket.SOCK_STREAM)
        except NetworkError:  # the namespace is gone (the plane stopped): nothing routes there
            raise OSError(errno.ENETUNREACH, "network is unreachable") from None
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (ip, port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def open(self, ip: str, port: int, tls: bool = False) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP (with ``tls``: TLS) connection to ``ip:port`` from the namespace. OSError as the
        kernel refuses it, TimeoutError after CONNECT_TIMEOUT."""
        async with asyncio.timeout(CONNECT_TIMEOUT):
            sock = await self.dial(ip, port)
            try:
                if not tls:
                    return await asyncio.open_connection(sock=sock)
                if self._tls is None:
                    self._tls = _insecure_context()
                return await asyncio.open_connection(sock=sock, ssl=self._tls, server_hostname=ip)
            except BaseException:
                sock.close()
                raise
