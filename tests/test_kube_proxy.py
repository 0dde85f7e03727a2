"""kube-proxy (nftables mode) on real node namespaces: a real etcdlite + apiserver, a fabric of 3
nodes, "pods" (namespaces on the node bridges) running a small server that answers with its name
and the client address it saw, Services and Endpoints written through the API, and
``python -m node.proxy`` on every node. Traffic is checked from pods, from the nodes and from a
client namespace outside the nodes; the proxies are killed and restarted under traffic."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from harness.plane import apiserver_on_etcdlite, start_component
from harness.procs import Registry

from apiserver import resources
from apiserver.client import Client
from apiserver.pb import core_pb2
from node import network
from node.network import fabric as fabric_mod
from node.network import iproute, netns, pod
from node.proxy import nft, routes, rules
from node.proxy.model import EndpointInfo, ServicePortInfo

pytestmark = pytest.mark.process

NODES = 3
HTTP_PORT, UDP_PORT = 8080, 5353
EXT_CLIENT_IP = "10.250.255.1"
WAIT = 20.0

SERVER = r"""
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name = sys.argv[1]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{name} {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", %d))
def echo():
    while True:
        data, addr = u.recvfrom(2048)
        u.sendto(name.encode(), addr)
threading.Thread(target=echo, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", %d), H).serve_forever()
""" % (UDP_PORT, HTTP_PORT)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces and nftables inside them"
    if iproute.ip_binary() is None:
        return "needs iproute2's `ip`"
    if nft.nft_binary() is None or nft.conntrack_binary() is None:
        return "needs nft and conntrack: apt-get install nftables conntrack"
    return None


class Plane:
    """The fabric, pods, proxies and API client of this module."""

    def __init__(self, api, tmp, reg: Registry) -> None:
        self.api, self.tmp, self.reg = api, tmp, reg
        self.prefix = network.new_prefix()
        self.fabric = fabric_mod.Fabric(self.prefix)
        self.servers: list[subprocess.Popen] = []
        self.pods: dict[str, tuple[str, str, int]] = {}  # name -> (netns, ip, node index)
        self.proxies: dict[int, object] = {}
        self.client = Client(api.endpoint, timeout=15)
        self.ext = f"{self.prefix}-ext"

    def node_netns(self, i: int) -> str:
        return self.fabric.node_netns(i)

    def add_pod(self, name: str, i: int, serve: bool = True) -> tuple[str, str]:
        node = self.fabric.node(i)
        sandbox = f"{len(self.pods):02d}{name}".ljust(12, "0")
        ns = f"{node.name}-{sandbox[:10]}"
        pod.create_netns(ns)
        ip = pod.attach(ns, node.name, node.pod_cidr, str(self.tmp / f"ipam{i}"), sandbox).ip
        self.pods[name] = (ns, ip, i)
        if serve:
            self.servers.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, name],
                stdin=subprocess.DEVNULL))
            deadline = time.monotonic() + WAIT
            while True:  # reachable from its node, as a kubelet's probe would check
                try:
                    netns.http_get_in(node.name, f"http://{ip}:{HTTP_PORT}/", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        return ns, ip

    def add_external_client(self) -> str:
        """A namespace on the fabric that is no node (a machine beside the cluster); made once."""
        if self.ext in iproute.netns_names():
            return self.ext
        pod.create_netns(self.ext)
        veth = f"{self.prefix}x"
        iproute.ip(batch=[f"link add {veth} type veth peer name eth0 netns {self.ext}",
                          f"link set {veth} master {fabric_mod.FABRIC_BRIDGE}",
                          f"link set {veth} up"], netns=self.fabric.netns)
        iproute.ip(batch=["link set lo up", f"addr add {EXT_CLIENT_IP}/16 dev eth0",
                          "link set eth0 up"], netns=self.ext)
        return self.ext

    def start_proxy(self, i: int):
        node = self.fabric.node(i)
        ns = node.name
        proxy = start_component(
            self.tmp, f"proxy-n{i}", "node.proxy", self.api.endpoint, self.reg,
            ready=lambda: "services" in nft.list_chains(ns),
            node_name=f"n{i}", node_netns=ns, node_ip=node.ip, cluster_cidr="10.244.0.0/16",
            min_sync_period="100ms", log_level="debug",
            endpoints_source="endpointslices" if _slices_kind() else "endpoints")
        self.proxies[i] = proxy
        return proxy

    def close(self) -> None:
        for p in self.proxies.values():
            p.kill()
        for s in self.servers:
            s.kill()
            s.wait()
        self.client.close()
        network.cleanup(self.prefix)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    why = _why_not()
    if why:
        pytest.skip(why)
    root_ruleset = _root_ruleset()
    reg = Registry()
    with apiserver_on_etcdlite(tmp_path_factory, "kproxy") as api:
        p = Plane(api, tmp_path_factory.mktemp("kproxy-plane"), reg)
        try:
            p.fabric.create()
            for i in range(NODES):
                p.fabric.add_node(i)
            for i in range(NODES):
                p.add_pod(f"web{i}", i)
                p.add_pod(f"client{i}", i, serve=False)
            for i in range(NODES):
                p.start_proxy(i)
            yield p
        finally:
            reg.cleanup()
            p.close()
    assert not [n for n in iproute.netns_names() if n.startswith(p.prefix)]
    assert _root_ruleset() == root_ruleset  # the proxies never touched the root namespace


def _root_ruleset() -> str:
    return subprocess.run([nft.nft_binary(), "list", "ruleset"], capture_output=True,
                          text=True).stdout


# ---- helpers ----

def _service(name: str, cluster_ip: str, ports, *, type_: str = "ClusterIP",
             affinity: int | None = None, external_local=False, internal_local=False):
    svc = core_pb2.Service()
    svc.metadata.name, svc.metadata.namespace = name, "default"
    svc.spec.cluster_ip = cluster_ip
    svc.spec.type = type_
    for pname, port, target, proto, node_port in ports:
        svc.spec.ports.add(name=pname, port=port, target_port=str(target), protocol=proto,
                           node_port=node_port)
    if affinity is not None:
        svc.spec.session_affinity = "ClientIP"
        svc.spec.session_affinity_config.client_ip.timeout_seconds = affinity
    if external_local:
        svc.spec.external_traffic_policy = "Local"
    if internal_local:
        svc.spec.internal_traffic_policy = "Local"
    return svc


def _slices_kind():
    """discovery_pb2 when this tree has the EndpointSlice kind: the proxies then read slices,
    as upstream's do; until then Endpoints."""
    if resources.lookup("endpointslices") is None:
        return None
    from apiserver.pb import discovery_pb2
    return discovery_pb2


def _set_endpoints(plane: Plane, name: str, backends: list[str], ports) -> None:
    """The Service's Endpoints (and, where the kind exists, its one EndpointSlice), as a
    controller would write them for these backends."""
    _write_endpoints(plane, name, backends, ports)
    discovery_pb2 = _slices_kind()
    if discovery_pb2 is not None:
        _write_slice(plane, discovery_pb2, name, backends, ports)


def _write_slice(plane: Plane, discovery_pb2, name: str, backends: list[str], ports) -> None:
    sl = discovery_pb2.EndpointSlice(address_type="IPv4")
    sl.metadata.name, sl.metadata.namespace = f"{name}-by-hand", "default"
    sl.metadata.labels["kubernetes.io/service-name"] = name
    for b in backends:
        _, ip, i = plane.pods[b]
        e = sl.endpoints.add(addresses=[ip], node_name=f"n{i}")
        e.conditions.ready = True
    for pname, port, proto in ports:
        sl.ports.add(name=pname, port=port, protocol=proto)
    try:
        cur = plane.client.get("endpointslices", sl.metadata.name, "default")
    except Exception:
        plane.client.create(sl)
        return
    sl.metadata.resource_version = cur.metadata.resource_version
    plane.client.update(sl)


def _write_endpoints(plane: Plane, name: str, backends: list[str], ports) -> None:
    ep = core_pb2.Endpoints()
    ep.metadata.name, ep.metadata.namespace = name, "default"
    if backends:
        subset = ep.subsets.add()
        for b in backends:
            _, ip, i = plane.pods[b]
            subset.addresses.add(ip=ip, node_name=f"n{i}")
        for pname, port, proto in ports:
            subset.ports.add(name=pname, port=port, protocol=proto)
    try:
        cur = plane.client.get("endpoints", name, "default")
    except Exception:
        plane.client.create(ep)
        return
    ep.metadata.resource_version = cur.metadata.resource_version
    plane.client.update(ep)


def _endpoint_chain(svc: str, port_name: str, ip: str, port: int, proto: str = "TCP") -> str:
    sp = ServicePortInfo("default", svc, port_name, proto, "", 0)
    return rules.ENDPOINT_PREFIX + rules.endpoint_base(sp, EndpointInfo(ip, port))


def _wait(pred, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _chains_everywhere(plane: Plane, present: set[str], absent: set[str] = frozenset()) -> bool:
    for i in range(NODES):
        have = nft.list_chains(plane.node_netns(i))
        if not present <= have or absent & have:
            return False
    return True


def _get(ns: str, url: str) -> tuple[str, str]:
    r = netns.http_get_in(ns, url, timeout=3)
    name, seen = r.body.decode().split()
    return name, seen


def _names(ns: str, url: str, n: int) -> list[str]:
    return [_get(ns, url)[0] for _ in range(n)]


WEB_PORTS = [("http", 80, HTTP_PORT, "TCP", 0)]
WEB_EP_PORTS = [("http", HTTP_PORT, "TCP")]


# ---- tests ----

def test_cluster_ip_reaches_every_backend_from_every_node_and_a_removed_one_no_more(plane):
    plane.client.create(_service("web", "10.96.0.10", WEB_PORTS))
    webs = [f"web{i}" for i in range(NODES)]
    _set_endpoints(plane, "web", webs, WEB_EP_PORTS)
    chains = {_endpoint_chain("web", "http", plane.pods[w][1], HTTP_PORT) for w in webs}
    _wait(lambda: _chains_everywhere(plane, chains), "the web endpoints programmed on every node")
    for i in range(NODES):
        client_ns = plane.pods[f"client{i}"][0]
        seen = _names(client_ns, "http://10.96.0.10/", 40)
        assert set(seen) == set(webs), (i, seen)
        # pod to pod through the service: the backend sees the client pod's own address
        assert _get(client_ns, "http://10.96.0.10/")[1] == plane.pods[f"client{i}"][1]
    # from the node itself (a host-network process): masqueraded, still served
    assert _get(plane.node_netns(0), "http://10.96.0.10/")[0] in webs
    # a pod reaching itself through its service (hairpin) is answered
    assert _get(plane.pods["web1"][0], "http://10.96.0.10/")[0] in webs

    _set_endpoints(plane, "web", webs[:2], WEB_EP_PORTS)
    gone = _endpoint_chain("web", "http", plane.pods["web2"][1], HTTP_PORT)
    _wait(lambda: _chains_everywhere(plane, set(), {gone}), "web2's chain removed everywhere")
    for i in range(NODES):
        seen = _names(plane.pods[f"client{i}"][0], "http://10.96.0.10/", 30)
        assert set(seen) == {"web0", "web1"}, (i, seen)


def test_no_endpoints_a_port_no_endpoint_has_and_an_undefined_port_refuse_at_once(plane):
    plane.client.create(_service("empty", "10.96.0.11", [("http", 80, 8080, "TCP", 0)]))
    client_ns = plane.pods["client0"][0]

    def refused() -> float | None:
        t0 = time.monotonic()
        try:
            netns.connect_in(client_ns, "10.96.0.11", 80, timeout=5).close()
        except ConnectionRefusedError:
            return time.monotonic() - t0
        return None

    _wait(lambda: all("10.96.0.11 . tcp . 80 : goto reject-chain" in
                      nft.list_table(plane.node_netns(i)) for i in range(NODES)),
          "the empty service in no-endpoint-services")
    took = refused()
    assert took is not None and took < 0.5
    # from the node's own processes too
    with pytest.raises(ConnectionRefusedError):
        netns.connect_in(plane.node_netns(1), "10.96.0.11", 80, timeout=5)
    # a port name no endpoint has: that port refuses, the other one serves
    plane.client.create(_service("twoports", "10.96.0.17",
                                 [("http", 80, HTTP_PORT, "TCP", 0),
                                  ("metrics", 9090, "metrics", "TCP", 0)]))
    _set_endpoints(plane, "twoports", ["web0"], WEB_EP_PORTS)
    _wait(lambda: all("10.96.0.17 . tcp . 9090 : goto reject-chain" in t and
                      "10.96.0.17 . tcp . 80 : goto service-" in t
                      for t in map(nft.list_table, map(plane.node_netns, range(NODES)))),
          "one port of twoports served, the other in no-endpoint-services")
    with pytest.raises(ConnectionRefusedError):
        netns.connect_in(client_ns, "10.96.0.17", 9090, timeout=5)
    assert _get(client_ns, "http://10.96.0.17/")[0] == "web0"
    # a port the web service does not define, on its clusterIP
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        netns.connect_in(client_ns, "10.96.0.10", 81, timeout=5)
    assert time.monotonic() - t0 < 0.5


def test_node_port_from_outside_the_nodes_with_cluster_and_local_policies(plane):
    ext = plane.add_external_client()
    plane.client.create(_service("np", "10.96.0.12", [("http", 80, HTTP_PORT, "TCP", 30080)],
                                 type_="NodePort"))
    plane.client.create(_service("nplocal", "10.96.0.13",
                                 [("http", 80, HTTP_PORT, "TCP", 30081)], type_="NodePort",
                                 external_local=True))
    webs = [f"web{i}" for i in range(NODES)]
    _set_endpoints(plane, "np", webs, WEB_EP_PORTS)
    _set_endpoints(plane, "nplocal", ["web1"], WEB_EP_PORTS)
    chains = {_endpoint_chain("np", "http", plane.pods[w][1], HTTP_PORT) for w in webs}
    chains.add(_endpoint_chain("nplocal", "http", plane.pods["web1"][1], HTTP_PORT))
    _wait(lambda: _chains_everywhere(plane, chains), "node port services programmed")
    for i in range(NODES):
        node_ip = fabric_mod.node_ip(i)
        answers = [_get(ext, f"http://{node_ip}:30080/") for _ in range(30)]
        assert {a[0] for a in answers} == set(webs), (i, answers)
        # Cluster policy: masqueraded, the backend never sees the outside client
        assert EXT_CLIENT_IP not in {a[1] for a in answers}
    # Local policy: node 1 serves from its own endpoint with the client's address kept...
    for _ in range(10):
        assert _get(ext, f"http://{fabric_mod.node_ip(1)}:30081/") == ("web1", EXT_CLIENT_IP)
    # ...and node 0, which has none of its endpoints, drops (a timeout, as upstream), while its
    # pods still reach the endpoint on node 1 through the same node port.
    with pytest.raises(OSError):
        netns.connect_in(ext, fabric_mod.node_ip(0), 30081, timeout=1).close()
    assert _get(plane.pods["client0"][0], f"http://{fabric_mod.node_ip(0)}:30081/")[0] == "web1"
    # and so does the node itself (a host-network process), masqueraded
    assert _get(plane.node_netns(0), f"http://{fabric_mod.node_ip(0)}:30081/")[0] == "web1"


def _refused(ns: str, addr: str, port: int) -> bool:
    try:
        netns.connect_in(ns, addr, port, timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    raise AssertionError(f"{addr}:{port} accepted a connection")


def test_external_ips_from_outside_the_nodes_and_from_pods(plane):
    """An address of no node (TEST-NET-1) that the outside client routes to node 1, as an admin
    routes a Service's externalIPs to nodes: node 1 answers it as a node port (masqueraded with
    Cluster policy, the client's address kept with Local); pods anywhere reach it too."""
    ext = plane.add_external_client()
    addr, local_addr, dead_addr = "192.0.2.10", "192.0.2.11", "192.0.2.12"
    iproute.ip(batch=[f"route add {a}/32 via {fabric_mod.node_ip(1)}" for a in (addr, local_addr, dead_addr)],
               netns=ext)
    for name, cip, ips, local in (("ext", "10.96.0.27", [addr], False), ("extlocal", "10.96.0.28", [local_addr], True),
                                  ("extdead", "10.96.0.29", [dead_addr], False)):
        svc = _service(name, cip, WEB_PORTS, external_local=local)
        svc.spec.external_ips.extend(ips)
        plane.client.create(svc)
    webs = [f"web{i}" for i in range(NODES)]
    _set_endpoints(plane, "ext", webs, WEB_EP_PORTS)
    _set_endpoints(plane, "extlocal", ["web1"], WEB_EP_PORTS)
    chains = {_endpoint_chain("ext", "http", plane.pods[w][1], HTTP_PORT) for w in webs}
    chains.add(_endpoint_chain("extlocal", "http", plane.pods["web1"][1], HTTP_PORT))
    _wait(lambda: _chains_everywhere(plane, chains) and all(
        f"{dead_addr} . tcp . 80 : goto reject-chain" in nft.list_table(plane.node_netns(i)) for i in range(NODES)),
        "the external IPs programmed on every node")
    answers = [_get(ext, f"http://{addr}/") for _ in range(30)]
    assert {a[0] for a in answers} == set(webs), answers
    assert EXT_CLIENT_IP not in {a[1] for a in answers}  # Cluster policy: masqueraded
    for _ in range(5):
        assert _get(ext, f"http://{local_addr}/") == ("web1", EXT_CLIENT_IP)  # Local: the client's address
    assert set(_names(plane.pods["client0"][0], f"http://{addr}/", 30)) == set(webs)
    # no endpoints: refused, as a clusterIP is. The first SYN after the rules and the route are in
    # place is sometimes met by nothing (seen in full runs, not explained yet), so the refusal is
    # waited for, each attempt with a short timeout: a hang would never turn into it.
    assert _wait(lambda: _refused(ext, dead_addr, 80), "the connection refused")
    # (the nodes have no default route: each proxy routed the addresses to its uplink so that
    # the refusal happens; a Service's deletion takes its route away)
    assert all(routes.our_external_routes(plane.node_netns(i)) >= {addr, local_addr, dead_addr}
               for i in range(NODES))
    plane.client.delete("services", "extdead", "default")
    _wait(lambda: not any(dead_addr in routes.our_external_routes(plane.node_netns(i)) for i in range(NODES)),
          "the deleted Service's external IP route removed on every node")


def test_client_ip_affinity_pins_each_client(plane):
    plane.client.create(_service("sticky", "10.96.0.14", WEB_PORTS, affinity=60))
    webs = [f"web{i}" for i in range(NODES)]
    _set_endpoints(plane, "sticky", webs, WEB_EP_PORTS)
    chains = {_endpoint_chain("sticky", "http", plane.pods[w][1], HTTP_PORT) for w in webs}
    _wait(lambda: _chains_everywhere(plane, chains), "sticky service programmed")
    for i in range(NODES):
        seen = _names(plane.pods[f"client{i}"][0], "http://10.96.0.14/", 20)
        assert len(set(seen)) == 1, (i, seen)


def test_internal_traffic_policy_local_keeps_traffic_on_the_node(plane):
    plane.client.create(_service("nodelocal", "10.96.0.15", WEB_PORTS, internal_local=True))
    webs = [f"web{i}" for i in range(NODES)]
    _set_endpoints(plane, "nodelocal", webs, WEB_EP_PORTS)
    own = {i: _endpoint_chain("nodelocal", "http", plane.pods[f"web{i}"][1], HTTP_PORT)
           for i in range(NODES)}

    def local_chains(i: int) -> set[str]:
        return {c for c in nft.list_chains(plane.node_netns(i))
                if c.startswith(rules.ENDPOINT_PREFIX) and "/nodelocal/" in c}

    # every node programs its own endpoint only
    _wait(lambda: all(local_chains(i) == {own[i]} for i in range(NODES)), "nodelocal programmed")
    for i in range(NODES):
        seen = _names(plane.pods[f"client{i}"][0], "http://10.96.0.15/", 15)
        assert set(seen) == {f"web{i}"}, (i, seen)


def _udp_ask(ns: str, sock_port: int, dst: str, port: int) -> str:
    s = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sock_port))
        s.settimeout(1.0)
        s.sendto(b"?", (dst, port))
        return s.recvfrom(2048)[0].decode()
    finally:
        s.close()


def test_removed_udp_endpoint_flows_are_flushed_from_conntrack(plane):
    plane.client.create(_service("dns", "10.96.0.16", [("dns", 53, UDP_PORT, "UDP", 0)]))
    _set_endpoints(plane, "dns", ["web0"], [("dns", UDP_PORT, "UDP")])
    client_ns = plane.pods["client1"][0]
    assert _wait(lambda: _try(lambda: _udp_ask(client_ns, 40053, "10.96.0.16", 53)),
                 "a UDP answer") == "web0"
    # web0 still runs: only conntrack's memory of the flow could keep sending there
    _set_endpoints(plane, "dns", ["web2"], [("dns", UDP_PORT, "UDP")])
    gone = _endpoint_chain("dns", "dns", plane.pods["web0"][1], UDP_PORT, "UDP")
    _wait(lambda: _chains_everywhere(plane, set(), {gone}), "web0 removed from the UDP service")
    assert _wait(lambda: _try(lambda: _udp_ask(client_ns, 40053, "10.96.0.16", 53)) == "web2",
                 "the same flow answered by web2", timeout=5)


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


def _normalized_table(ns: str) -> list[str]:
    """The table's chains, maps and sets, each as nft prints it, sorted (nft lists chains in the
    order they were made, which a removed and re-added endpoint changes), without what moves on
    its own (affinity sets' remembered clients)."""
    text = nft.list_table(ns)
    text = re.sub(r"\n\t\telements = \{[^}]*expires[^}]*\}", "", text)
    return sorted(re.findall(r"^\t(?:chain|map|set) .*?^\t\}", text, re.S | re.M))


def test_proxy_killed_and_restarted_traffic_flows_and_the_table_converges(plane):
    _ensure_web(plane)
    _set_endpoints(plane, "web", ["web0", "web1"], WEB_EP_PORTS)
    client_ns = plane.pods["client0"][0]
    _wait(lambda: _try(lambda: _get(client_ns, "http://10.96.0.10/")), "web answering")
    node = plane.node_netns(0)
    before = _normalized_table(node)
    failures, ok = [], [0]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                _get(client_ns, "http://10.96.0.10/")
                ok[0] += 1
            except OSError as e:
                failures.append(repr(e))
            time.sleep(0.01)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        proxy = plane.proxies[0]
        proxy.kill()  # SIGKILL: no cleanup, the rules stay in the kernel
        time.sleep(0.5)  # traffic meanwhile is served by the rules in place
        # a change while it is dead: web1 leaves the web service
        _set_endpoints(plane, "web", ["web0"], WEB_EP_PORTS)
        gone = _endpoint_chain("web", "http", plane.pods["web1"][1], HTTP_PORT)
        assert gone in nft.list_chains(node)
        proxy.start()
        _wait(lambda: gone not in nft.list_chains(node), "the restarted proxy removing web1")
        _set_endpoints(plane, "web", ["web0", "web1"], WEB_EP_PORTS)
        _wait(lambda: gone in nft.list_chains(node), "web1 back")
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(5)
    assert failures == [] and ok[0] > 20, (failures[:3], ok[0])
    after = _normalized_table(node)
    assert len(after) > 20 and after == before
    for block in after:
        lines = block.splitlines()
        assert len(lines) == len(set(lines)), block  # no rule twice


def test_cleanup_flag_removes_the_table(plane, tmp_path):
    ns = f"{plane.prefix}-scratch"
    pod.create_netns(ns)
    try:
        nft.run_script(ns, "add table ip kube-proxy\nadd chain ip kube-proxy services\n")
        assert nft.table_exists(ns)
        out = subprocess.run([sys.executable, "-m", "node.proxy", "--node-name", "x",
                              "--node-netns", ns, "--node-ip", "10.250.0.9", "--cleanup"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert not nft.table_exists(ns)
    finally:
        pod.delete_netns(ns)


def test_a_service_given_its_address_by_the_apiserver_is_programmed(plane):
    svc = plane.client.create(_service("allocated", "", WEB_PORTS))
    if not svc.spec.cluster_ip:
        pytest.skip("this apiserver allocates no clusterIPs yet (branch svcalloc)")
    _set_endpoints(plane, "allocated", ["web2"], WEB_EP_PORTS)
    url = f"http://{svc.spec.cluster_ip}/"
    assert _wait(lambda: _try(lambda: _get(plane.pods["client0"][0], url)),
                 "the allocated clusterIP answering")[0] == "web2"


def test_sigterm_stops_the_proxy_and_leaves_the_rules(plane):
    proxy, node = plane.proxies[2], plane.node_netns(2)
    before = _normalized_table(node)
    assert proxy.terminate(timeout=10) == 0
    assert _normalized_table(node) == before  # traffic keeps flowing on them
    assert _get(plane.pods["client2"][0], "http://10.96.0.10/")[0].startswith("web")
    proxy.start()


def _ensure_web(plane: Plane) -> None:
    """The web service of the first test (so that a test run alone finds it too)."""
    try:
        plane.client.get("services", "web", "default")
    except Exception:
        plane.client.create(_service("web", "10.96.0.10", WEB_PORTS))


def test_a_table_deleted_behind_the_proxys_back_is_rebuilt_at_the_next_change(plane):
    _ensure_web(plane)
    node = plane.node_netns(1)
    _set_endpoints(plane, "web", ["web0", "web1"], WEB_EP_PORTS)
    gone = _endpoint_chain("web", "http", plane.pods["web1"][1], HTTP_PORT)
    _wait(lambda: gone in nft.list_chains(node), "web1 programmed")
    _set_endpoints(plane, "web", ["web0"], WEB_EP_PORTS)  # web1's chain: emptied, deleted later
    service_chain = next(c for c in nft.list_chains(node)
                         if c.startswith("service-") and c.endswith("-default/web/tcp/http"))
    _wait(lambda: "numgen random mod 1 " in nft.nft(node, "list", "chain", "ip", "kube-proxy",
                                                    service_chain).stdout,
          "web down to one endpoint")
    nft.delete_table(node)
    _set_endpoints(plane, "web", ["web0", "web2"], WEB_EP_PORTS)  # a partial sync fails: full
    back = _endpoint_chain("web", "http", plane.pods["web2"][1], HTTP_PORT)
    _wait(lambda: back in nft.list_chains(node), "the table rebuilt")
    assert gone not in nft.list_chains(node)
    assert {_get(plane.pods["client1"][0], "http://10.96.0.10/")[0] for _ in range(20)} == \
        {"web0", "web2"}
