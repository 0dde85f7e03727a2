"""The pod network on real namespaces: a fabric of nodes, pods attached to node bridges reaching
pods on other nodes by IP, host-local IPAM, sockets opened inside a namespace, and removal of
everything by prefix. The root namespace's links and routes are compared before and after each
test: the plane must leave no trace there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from node import network
from node.network import fabric as fabric_mod
from node.network import iproute as iplib
from node.network import netns, owner, pod
from node.network.ipam import HostLocalIpam, IpamExhausted

BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"


def _need_root_and_ip():
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, veths and bridges (run the suite as root)")
    if iplib.ip_binary() is None:
        pytest.skip("needs iproute2's `ip` (apt-get install iproute2)")


def _root_ns_state() -> tuple[str, str, str, str]:
    """What the plane must never change: the root namespace's links, routes and forwarding."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    routes4 = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                             text=True, check=True).stdout
    routes6 = subprocess.run(["ip", "-6", "route", "show", "table", "main"], capture_output=True,
                             text=True, check=True).stdout
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        fwd = f.read()
    return links, routes4, routes6, fwd


def _leftovers(prefix: str) -> list[str]:
    """Names with ``prefix`` in ``ip netns list`` and in the root namespace's ``ip -o link``."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    out = [line for line in ns.splitlines() if line.startswith(prefix)]
    out += [line for line in links.splitlines() if prefix in line]
    if os.path.exists(owner.marker_path(prefix)):
        out.append(owner.marker_path(prefix))
    return out


@pytest.fixture
def plane():
    """A fresh prefix and its Fabric (created); at teardown everything of the prefix is removed
    and the root namespace is checked unchanged, pass or fail."""
    _need_root_and_ip()
    before = _root_ns_state()
    prefix = network.new_prefix()
    fab = fabric_mod.Fabric(prefix)
    servers: list[subprocess.Popen] = []
    fab.servers = servers
    try:
        fab.create()
        yield fab
    finally:
        for s in servers:
            s.kill()
            s.wait()
        network.cleanup(prefix)
    assert _leftovers(prefix) == []
    assert _root_ns_state() == before


def _serve(fab, pod_netns: str, tmp_path, page: str, port: int = 8080) -> subprocess.Popen:
    """busybox httpd inside ``pod_netns`` serving ``page`` at /index.html."""
    root = tmp_path / f"www-{pod_netns}"
    root.mkdir()
    (root / "index.html").write_text(page)
    srv = subprocess.Popen(["ip", "netns", "exec", pod_netns, BUSYBOX, "httpd", "-f",
                            "-p", str(port), "-h", str(root)])
    fab.servers.append(srv)
    return srv


def _get_until(netns_name: str, url: str, deadline_s: float = 10.0) -> netns.HttpResult:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return netns.http_get_in(netns_name, url, timeout=2.0)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _add_pod(fab, i: int, sandbox_id: str, state_dir) -> tuple[str, pod.PodIP]:
    node = fab.node(i)
    name = f"{node.name}-{sandbox_id[:10]}"
    pod.create_netns(name)
    return name, pod.attach(name, node.name, node.pod_cidr, str(state_dir), sandbox_id)


@pytest.mark.process
def test_pods_on_different_nodes_reach_each_other_by_ip(plane, tmp_path):
    nodes = [plane.add_node(i) for i in range(3)]
    assert [n.ip for n in nodes] == ["10.250.0.1", "10.250.0.2", "10.250.0.3"]
    for n in nodes:
        assert netns.read_sysctl_in(n.name, "net.ipv4.ip_forward") == "1"
    pods = {i: _add_pod(plane, i, f"{i:02d}" + "ab" * 31, tmp_path / f"ipam{i}") for i in range(3)}
    for i, (_, pip) in pods.items():
        assert pip.ip.startswith(f"10.244.{i}.") and pip.gateway == f"10.244.{i}.1"
        assert pip.prefixlen == 24
    for i in range(3):
        _serve(plane, pods[i][0], tmp_path, f"page of pod {i}\n")
    for src in range(3):
        for dst in range(3):
            if src != dst:
                r = _get_until(pods[src][0], f"http://{pods[dst][1].ip}:8080/index.html")
                assert (r.status, r.body) == (200, f"page of pod {dst}\n".encode())
    # From a node's namespace too (how the kubelet probes), and from a pod's own process.
    r = _get_until(nodes[1].name, f"http://{pods[2][1].ip}:8080/")
    assert r.body == b"page of pod 2\n"
    out = subprocess.run(["ip", "netns", "exec", pods[0][0], BUSYBOX, "wget", "-q", "-O", "-",
                          f"http://{pods[1][1].ip}:8080/index.html"],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout == "page of pod 1\n", out.stderr
    # A tcpSocket-style probe: open, then refused on a closed port.
    netns.connect_in(nodes[0].name, pods[1][1].ip, 8080, timeout=2).close()
    with pytest.raises(ConnectionRefusedError):
        netns.connect_in(nodes[0].name, pods[1][1].ip, 8081, timeout=2)


@pytest.mark.process
def test_attach_is_stable_per_sandbox_distinct_across_and_detach_is_idempotent(plane, tmp_path):
    node = plane.add_node(0)
    state = tmp_path / "ipam"
    a, ip_a = _add_pod(plane, 0, "a" * 64, state)
    b, ip_b = _add_pod(plane, 0, "b" * 64, state)
    assert ip_a.ip != ip_b.ip
    again = pod.attach(a, node.name, node.pod_cidr, str(state), "a" * 64)
    assert again == ip_a == pod.status(a)
    host = pod.host_veth_name("a" * 64)
    assert host in iplib.link_names(node.name) and len(host) == 11
    assert netns.read_sysctl_in(a, "net.ipv4.conf.eth0.arp_notify") == "1"

    pod.detach(a, node.name, str(state), "a" * 64)
    assert host not in iplib.link_names(node.name)
    assert pod.status(a) is None and "eth0" not in iplib.link_names(a)
    assert sorted(os.listdir(state)) == sorted([ip_b.ip, "id." + "b" * 64, "last_reserved_ip",
                                                "lock"])
    pod.detach(a, node.name, str(state), "a" * 64)  # again: nothing left to do, no error
    pod.delete_netns(a)
    pod.detach(a, node.name, str(state), "a" * 64)  # namespace gone: still fine
    pod.delete_netns(a)

    with pytest.raises(network.NetworkError, match="not found"):
        pod.attach(f"{node.name}-nosuch", node.name, node.pod_cidr, str(state), "c" * 64)
    assert HostLocalIpam(str(state)).lookup("c" * 64) is None  # nothing allocated for it


@pytest.mark.process
def test_a_reused_address_is_reachable_at_once_from_another_node(plane, tmp_path):
    """The node forgets the MAC of an address's previous pod on attach: without that, traffic
    forwarded to a reused address goes to the dead pod's MAC for ~30 s."""
    plane.add_node(0)
    plane.add_node(1)
    state = tmp_path / "ipam"
    _add_pod(plane, 0, "keeper", state)  # keeps kpbr0 up: its neighbour table is not flushed
    first, ip1 = _add_pod(plane, 0, "first", state)
    _serve(plane, first, tmp_path, "first\n")
    assert _get_until(plane.node_netns(1), f"http://{ip1.ip}:8080/").body == b"first\n"
    pod.detach(first, plane.node_netns(0), str(state), "first")
    ipam = HostLocalIpam(str(state), "10.244.0.0/24")  # go once round the range: ip1 is next
    for k in range(251):
        ipam.allocate(f"filler{k}")
    for k in range(251):
        ipam.release(f"filler{k}")
    second, ip2 = _add_pod(plane, 0, "second", state)
    assert ip2 == ip1
    _serve(plane, second, tmp_path, "second\n")
    assert _get_until(plane.node_netns(1), f"http://{ip2.ip}:8080/", deadline_s=3).body == \
        b"second\n"


@pytest.mark.process
def test_twenty_pods_get_distinct_addresses_and_detach_releases_them_all(plane, tmp_path):
    # how long attach and detach take is measured by benchmarks/pod_network.py, not asserted here
    node = plane.add_node(0)
    names = [f"{node.name}-{k:010x}" for k in range(20)]
    for name in names:
        pod.create_netns(name)
    ips = [pod.attach(name, node.name, node.pod_cidr, str(tmp_path), f"{k:064x}").ip
           for k, name in enumerate(names)]
    assert len(set(ips)) == 20
    for k, name in enumerate(names):
        pod.detach(name, node.name, str(tmp_path), f"{k:064x}")
        assert pod.status(name) is None
    assert not [f for f in os.listdir(tmp_path) if f[0].isdigit()]


@pytest.mark.process
def test_fabric_restart_finds_what_exists_and_nodes_come_and_go(plane, tmp_path):
    plane.add_node(0)
    plane.add_node(1)
    again = fabric_mod.Fabric(plane.prefix)  # a restarted plane
    again.create()
    again.add_node(0)
    again.add_node(2)
    assert again.nodes() == [0, 1, 2]

    def routes(i):
        return {r["dst"]: r.get("gateway") for r in iplib.ip_json("route", netns=plane.node_netns(i))}

    assert routes(0)["10.244.2.0/24"] == "10.250.0.3"
    assert routes(1)["10.244.2.0/24"] == "10.250.0.3"
    assert routes(2)["10.244.0.0/24"] == "10.250.0.1" and routes(2)["10.244.1.0/24"] == "10.250.0.2"
    p0, ip0 = _add_pod(again, 0, "0" * 64, tmp_path)
    _serve(plane, p0, tmp_path, "still here\n")
    assert _get_until(plane.node_netns(2), f"http://{ip0.ip}:8080/").body == b"still here\n"

    # Node 10's namespaces share "<prefix>-n1" as a string prefix: removing node 1 spares them.
    again.add_node(10)
    pod1, _ = _add_pod(again, 1, "1" * 64, tmp_path / "n1")
    pod10, _ = _add_pod(again, 10, "a" * 64, tmp_path / "n10")
    again.remove_node(1)
    assert again.nodes() == [0, 2, 10]
    assert not iplib.netns_exists(pod1) and iplib.netns_exists(pod10)
    assert "10.244.1.0/24" not in routes(0) and "10.244.10.0/24" in routes(0)
    network.cleanup_pods(plane.node_netns(10))  # a runtime's cleanup: its pods, not its node
    assert not iplib.netns_exists(pod10) and again.nodes() == [0, 2, 10]


@pytest.mark.process
def test_cleanup_is_idempotent_and_sweep_takes_only_dead_owners(tmp_path):
    _need_root_and_ip()
    before = _root_ns_state()
    dead, alive = network.new_prefix(), network.new_prefix()
    try:
        for p in (dead, alive):
            f = fabric_mod.Fabric(p)
            f.create()
            f.add_node(0)
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        owner.claim(dead, pid=gone.pid)  # as if a killed test run had made it
        swept = network.sweep()
        assert dead in swept and alive not in swept
        assert _leftovers(dead) == [] and network.prefixed_netns(alive) == [
            f"{alive}-fab", f"{alive}-n0"]
        network.cleanup(alive)
        network.cleanup(alive)
        assert _leftovers(alive) == []
    finally:
        network.cleanup(dead)
        network.cleanup(alive)
    assert _root_ns_state() == before
    with pytest.raises(ValueError):
        network.cleanup("")  # would match every namespace on the machine


@pytest.mark.process
def test_run_in_leaves_the_callers_threads_home(plane):
    node = plane.add_node(0)
    home = os.readlink("/proc/thread-self/ns/net")
    inside = netns.run_in(node.name, lambda: os.readlink("/proc/thread-self/ns/net"))
    assert inside != home and os.readlink("/proc/thread-self/ns/net") == home
    with pytest.raises(ZeroDivisionError):
        netns.run_in(node.name, lambda: 1 / 0)
    with pytest.raises(network.NetworkError, match="no such network namespace"):
        netns.run_in(f"{plane.prefix}-nosuch", lambda: None)
    # A probe to an address nobody holds ends by its timeout, not the ARP give-up (~3 s).
    t = time.monotonic()
    with pytest.raises(OSError):
        netns.connect_in(node.name, "10.244.0.250", 80, timeout=0.3)
    assert time.monotonic() - t < 2
    with pytest.raises(ValueError):
        pod.attach("bad name", node.name, node.pod_cidr, "/nonexistent", "x")  # before any ip
    # No thread of this process is left in another namespace.
    for tid in os.listdir("/proc/self/task"):
        assert os.readlink(f"/proc/self/task/{tid}/ns/net") == home


# --- IPAM: plain files, no namespaces ---------------------------------------------------------

def test_ipam_distinct_stable_round_robin_and_reuse(tmp_path):
    ipam = HostLocalIpam(str(tmp_path), "10.244.7.0/24")
    assert str(ipam.gateway) == "10.244.7.1"
    got = {f"s{k}": str(ipam.allocate(f"s{k}")) for k in range(253)}
    assert len(set(got.values())) == 253
    assert min(got.values(), key=lambda a: int(a.split(".")[-1])) == "10.244.7.2"
    assert str(ipam.allocate("s5")) == got["s5"]  # the same sandbox keeps its address
    with pytest.raises(IpamExhausted, match="all 253 addresses are taken"):
        ipam.allocate("one-too-many")
    assert ipam.release("s5") == [got["s5"]] and ipam.release("s5") == []
    assert str(ipam.allocate("new")) == got["s5"]  # a released address is reused
    assert ipam.lookup("new") == ipam.lookup("new") and str(ipam.lookup("new")) == got["s5"]
    assert ipam.lookup("s5") is None
    with pytest.raises(ValueError):
        ipam.release("../lock")  # ids become file names: nothing may leave the directory


def test_ipam_hands_out_a_released_address_last(tmp_path):
    ipam = HostLocalIpam(str(tmp_path), "10.244.0.0/24")
    a, b = ipam.allocate("a"), ipam.allocate("b")
    ipam.release("a")
    c = ipam.allocate("c")
    assert c not in (a, b) and int(c) == int(b) + 1
    # A restarted runtime (a new object on the same files) continues from the same place.
    assert int(HostLocalIpam(str(tmp_path), "10.244.0.0/24").allocate("d")) == int(c) + 1


@pytest.mark.process
def test_ipam_concurrent_processes_never_share_an_address(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from node.network.ipam import HostLocalIpam
        ipam = HostLocalIpam({str(tmp_path)!r}, "10.244.3.0/24")
        for k in range(100):
            ipam.allocate(sys.argv[1] + str(k))
    """)
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", code, tag], env=env) for tag in ("x", "y")]
    threads = [threading.Thread(target=lambda t=t: [HostLocalIpam(str(tmp_path), "10.244.3.0/24")
                                                   .allocate(f"{t}{k}") for k in range(20)])
               for t in ("t", "u")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    owners = HostLocalIpam(str(tmp_path)).allocations()
    assert len(owners) == 240 and len(set(owners.values())) == 240
