"""The apiserver's listener inside the plane's control-plane namespace (--bind-netns,
apiserver/netns_listen.py): it waits for the namespace (the nodes are made after the apiserver
starts), serves there once it exists, lets go of it when the namespace is deleted (its socket
would otherwise keep a deleted namespace alive) and serves again when the namespace is made anew
(a plane started again). A real grpclite server with a small HTTP/1.1 front, a real fabric;
clients connect from a node's namespace, as pods' packets arrive."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from apiserver.netns_listen import NetnsListener
from grpclite import GrpcServer
from node import network
from node.network import iproute
from node.network.fabric import CONTROL_PLANE_IP, Fabric
from node.network.netns import connect_in

pytestmark = pytest.mark.process  # runs `ip`


class Hello(asyncio.Protocol):
    """What the REST front would be: answers any request with the client's address."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        peer = self.transport.get_extra_info("peername")[0].encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(peer), peer))
        self.transport.close()


@pytest.fixture
def fabric():
    if os.geteuid() != 0 or iproute.ip_binary() is None:
        pytest.skip("needs root and iproute2: network namespaces")
    f = Fabric(network.new_prefix())
    f.create()
    f.add_node(0)
    try:
        yield f
    finally:
        network.cleanup(f.prefix)


def ask(netns: str, port: int) -> bytes | None:
    """The answer to a request sent from ``netns`` to the control plane's address, None when
    nothing listens there."""
    try:
        sock = connect_in(netns, CONTROL_PLANE_IP, port, 2)
    except OSError:
        return None
    with sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.rsplit(b"\r\n\r\n", 1)[-1]


def test_the_listener_follows_the_control_plane_namespace(fabric):
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state = {}

    async def main():
        server = GrpcServer()
        server.http1_protocol = Hello
        state["port"] = port = await server.listen("127.0.0.1", 0)
        await server.start()
        listener = state["listener"] = NetnsListener(server, fabric.control_plane_netns, CONTROL_PLANE_IP,
                                                     port, None, interval=0.05)
        state["stop"] = stop = asyncio.Event()
        ready.set()
        await listener.run(stop)
        await server.stop()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        port, listener = state["port"], state["listener"]
        node = fabric.node(0)

        def until(check, what):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if check():
                    return
                time.sleep(0.05)
            raise AssertionError(f"timed out waiting for {what}")

        until(lambda: listener.looks >= 3, "a few looks")
        assert not listener.listening  # no namespace yet: waiting
        fabric.add_control_plane()
        until(lambda: listener.listening, "the listener in the new namespace")
        assert ask(node.name, port) == node.ip.encode()  # the client's own address, no relay

        iproute.ip("netns", "del", fabric.control_plane_netns)  # the plane stops
        until(lambda: not listener.listening, "the listener letting go of the deleted namespace")
        # the namespace, no longer held, goes with its link to the fabric
        until(lambda: f"{fabric.prefix}cp" not in iproute.link_names(fabric.netns), "the old namespace gone")

        fabric.add_control_plane()  # and starts again: a new namespace of that name
        until(lambda: listener.listening, "the listener in the namespace made anew")
        assert ask(node.name, port) == node.ip.encode()
    finally:
        if "stop" in state:
            loop.call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        loop.close()
