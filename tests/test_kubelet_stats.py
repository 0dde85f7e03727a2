"""The real kubelet's /stats/summary, /metrics/resource and /metrics, as upstream's kubelet
serves them, read from the cgroups and network namespaces its pods run in.

The secure plane and node of test_kubelet_auth, the kubelet's housekeeping at 1 s. A pod spinning in a shell loop uses a clear share of a core, an idle
one nearly none; UDP sent from the node's namespace to a pod shows in its interface's
rxBytes; the resource metrics parse as Prometheus text with upstream's families; a user RBAC
gives no nodes/stats or nodes/metrics gets the kubelet's 403. Needs root, runc, conmon,
busybox-static. Timing-bound (CPU shares): in conftest's SERIAL list."""

from __future__ import annotations

import contextlib
import json
import re
import socket

import pytest

from apiserver.pb import core_pb2
from harness.etcd_client import wait_until as poll
from harness.nodes import need_runtime, running_pod
from harness.procs import Registry
from node.network.netns import socket_in
from tests.test_kubelet_auth import BOB, DAVE, secure_node
from tests.test_kubelet_auth import kubelet_get as auth_get

pytestmark = pytest.mark.process

NS = "kubelet-stats"
TIMEOUT = 60.0
CORE = 1_000_000_000  # nanocores


def wait_until(check, what: str, timeout: float = TIMEOUT):
    return poll(check, timeout, what=what)


def _pod(name: str, script: str) -> core_pb2.Pod:
    pod = core_pb2.Pod(metadata={"name": name, "namespace": NS})
    pod.spec.termination_grace_period_seconds = 0
    pod.spec.automount_service_account_token = False
    pod.spec.containers.add(name="c", image="busybox", command=["sh", "-c", script])
    return pod


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    reg = Registry()
    tmp = tmp_path_factory.mktemp("kubeletstats")
    try:
        with secure_node(tmp, reg, NS, "--housekeeping-interval", "1s") as (api, pki, admin, node):
            admin.create(_pod("busy", "while :; do :; done"))
            admin.create(_pod("idle", "sleep 3600"))
            for name in ("busy", "idle"):
                wait_until(lambda: running_pod(admin, name, NS), f"pod {name} running")
            port = admin.get("nodes", node.name, "").status.daemon_endpoints.kubelet_endpoint.port
            try:
                yield pki, admin, node, port
            finally:
                # the spinning pod goes first: it costs the machine a core
                with contextlib.suppress(Exception):
                    admin.delete("pods", "busy", NS, grace_period_seconds=0)
    finally:
        reg.cleanup()


def kubelet_get(pki, port: int, path: str, *, token: str = DAVE) -> tuple[int, str]:
    """(status, text) of a GET at the kubelet's port, as dave (allowed) unless told."""
    return auth_get(pki, port, path, token=token)


def summary(pki, port, query: str = "") -> dict:
    code, text = kubelet_get(pki, port, "/stats/summary" + query)
    assert code == 200, text
    return json.loads(text)


def pod_stats(s: dict, name: str) -> dict | None:
    return next((p for p in s["pods"] if p["podRef"] == {**p["podRef"], "name": name, "namespace": NS}), None)


def test_a_busy_pod_uses_a_core_and_an_idle_one_none(plane):
    pki, admin, node, port = plane
    uids = {name: admin.get("pods", name, NS).metadata.uid for name in ("busy", "idle")}

    def rated():  # both pods' containers sampled twice (usageNanoCores needs two passes)
        s = summary(pki, port)
        pods = {name: pod_stats(s, name) for name in uids}
        ok = all(p and "usageNanoCores" in p.get("cpu", {}) and p["containers"]
                 and "usageNanoCores" in p["containers"][0].get("cpu", {}) for p in pods.values())
        return (s, pods) if ok else None

    s, pods = wait_until(rated, "CPU rates of both pods")
    # a shell spinning gets most of a core of this 2-core machine (shared with other tests)
    busy = wait_until(lambda: (p := pod_stats(summary(pki, port), "busy")) and
                      p["cpu"]["usageNanoCores"] > CORE // 4 and p, "the busy pod using a quarter core or more")
    busy_c = busy["containers"][0]
    assert busy_c["name"] == "c" and busy_c["cpu"]["usageNanoCores"] > CORE // 4, busy_c
    assert busy["podRef"]["uid"] == uids["busy"]
    # (its first window may hold its start)
    idle = wait_until(lambda: (p := pod_stats(summary(pki, port), "idle")) and
                      p["cpu"]["usageNanoCores"] < CORE // 20 and p, "the idle pod under 5% of a core")
    for p in (busy, idle):
        c = p["containers"][0]
        assert c["memory"]["workingSetBytes"] > 0 and c["memory"]["usageBytes"] >= c["memory"]["workingSetBytes"]
        assert p["memory"]["workingSetBytes"] >= c["memory"]["workingSetBytes"] > 0
        assert p["cpu"]["usageCoreNanoSeconds"] >= c["cpu"]["usageCoreNanoSeconds"] > 0
        assert c["logs"]["usedBytes"] >= 0 and c["logs"]["capacityBytes"] > 0
        assert "rootfs" in c and p["ephemeral-storage"]["usedBytes"] >= 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c["startTime"]), c["startTime"]
        assert p["process_stats"]["process_count"] >= 1
    n = s["node"]
    assert n["nodeName"] == node.name
    assert n["cpu"]["usageCoreNanoSeconds"] > 0 and n["memory"]["workingSetBytes"] > 0
    assert 0 < n["memory"]["availableBytes"]
    assert n["fs"]["capacityBytes"] >= n["fs"]["availableBytes"] > 0
    assert n["rlimit"]["maxpid"] > 0 and n["rlimit"]["curproc"] > 0
    assert n["runtime"]["imageFs"]["usedBytes"] > 0
    # only_cpu_and_memory: upstream's GetCPUAndMemoryStats, nothing of networks or filesystems
    small = summary(pki, port, "?only_cpu_and_memory=true")
    assert set(small["node"]) <= {"nodeName", "startTime", "cpu", "memory"}, small["node"]
    p = pod_stats(small, "busy")
    assert set(p) <= {"podRef", "startTime", "containers", "cpu", "memory"}, p
    assert set(p["containers"][0]) <= {"name", "startTime", "cpu", "memory"}
    assert kubelet_get(pki, port, "/stats/summary?only_cpu_and_memory=maybe")[0] == 400


def test_traffic_into_a_pod_shows_in_its_rx_bytes(plane):
    pki, admin, node, port = plane
    pod_ip = admin.get("pods", "idle", NS).status.pod_ip

    def eth0(name: str):
        net = (pod_stats(summary(pki, port), name) or {}).get("network") or {}
        return net if net.get("name") == "eth0" else None

    before = wait_until(lambda: eth0("idle"), "the idle pod's eth0 in the summary")
    other = wait_until(lambda: eth0("busy"), "the busy pod's eth0 in the summary")
    assert {"rxBytes", "txBytes", "rxErrors", "txErrors"} <= set(before)
    assert [i["name"] for i in before["interfaces"]] == ["eth0"]  # no loopback
    sock = socket_in(node.netns, socket.AF_INET, socket.SOCK_DGRAM)

    def received() -> bool:
        for _ in range(100):  # nobody listens: the pod's interface receives them all the same
            sock.sendto(b"x" * 1000, (pod_ip, 9))
        now = eth0("idle")
        return bool(now) and now["rxBytes"] >= before["rxBytes"] + 200 * 1000

    with sock:
        poll(received, TIMEOUT, interval=0.5, what="200 kB more received by the idle pod")
    assert eth0("busy")["rxBytes"] < other["rxBytes"] + 50 * 1000  # the other pod's stayed its own
    node_net = summary(pki, port)["node"]["network"]
    assert node_net["interfaces"] and all(not i["name"].startswith(("lo", "veth", "kpv"))
                                          for i in node_net["interfaces"])


# a sample line of the text format: name, labels, value, optional timestamp
_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? '
                     r'(\S+)(?: (-?\d+))?')


def parse_prometheus(text: str) -> dict[str, dict]:
    """family -> {"type", "help", "samples": [(name, {labels}, value, timestamp)]}; asserts on
    any line the text format does not allow."""
    families: dict[str, dict] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            families.setdefault(name, {"samples": []})["help"] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families.setdefault(name, {"samples": []})["type"] = kind
        else:
            m = _SAMPLE.fullmatch(line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value, stamp = m.groups()
            family = next(f for f in (name, re.sub(r"_(bucket|sum|count)$", "", name)) if f in families)
            pairs = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels or ""))
            families[family]["samples"].append((name, pairs, float(value), int(stamp) if stamp else None))
    return families


def test_resource_metrics_parse_with_upstreams_families(plane):
    pki, admin, node, port = plane
    wait_until(lambda: 'container_cpu_usage_seconds_total{container="c",namespace="%s",pod="busy"}' % NS
               in kubelet_get(pki, port, "/metrics/resource")[1], "the busy container's CPU in the metrics")
    code, text = kubelet_get(pki, port, "/metrics/resource")
    assert code == 200
    fams = parse_prometheus(text)
    expected = {"node_cpu_usage_seconds_total": "counter", "node_memory_working_set_bytes": "gauge",
                "container_cpu_usage_seconds_total": "counter", "container_memory_working_set_bytes": "gauge",
                "container_start_time_seconds": "gauge", "pod_cpu_usage_seconds_total": "counter",
                "pod_memory_working_set_bytes": "gauge", "resource_scrape_error": "gauge"}
    assert {k: fams[k]["type"] for k in expected} == expected
    assert fams["node_cpu_usage_seconds_total"]["help"] == \
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds"
    assert list(fams) == sorted(fams)
    (_, _, errors, _), = fams["resource_scrape_error"]["samples"]
    assert errors == 0
    busy = {"container": "c", "namespace": NS, "pod": "busy"}
    cpu = [s for s in fams["container_cpu_usage_seconds_total"]["samples"] if s[1] == busy]
    assert len(cpu) == 1 and cpu[0][2] > 0 and cpu[0][3] > 1_600_000_000_000  # ms since the epoch
    pods = {(s[1]["namespace"], s[1]["pod"]) for s in fams["pod_memory_working_set_bytes"]["samples"]}
    assert {(NS, "busy"), (NS, "idle")} <= pods
    starts = [s for s in fams["container_start_time_seconds"]["samples"] if s[1] == busy]
    assert len(starts) == 1 and starts[0][3] is None and starts[0][2] > 1_600_000_000


def test_kubelet_metrics(plane):
    pki, admin, node, port = plane
    code, text = kubelet_get(pki, port, "/metrics")
    assert code == 200
    fams = parse_prometheus(text)
    values = {(name, tuple(sorted(labels.items()))): v for f in fams.values() for name, labels, v, _ in f["samples"]}
    assert values[("kubelet_node_name", (("node", node.name),))] == 1
    assert values[("kubelet_running_pods", ())] >= 2
    assert values[("kubelet_running_containers", (("container_state", "running"),))] >= 2
    assert values[("kubelet_pod_start_duration_seconds_count", ())] >= 2
    assert values[("kubelet_pleg_relist_duration_seconds_count", ())] > 0
    assert fams["kubelet_pod_start_duration_seconds"]["type"] == "histogram"
    assert values[("process_start_time_seconds", ())] > 1_600_000_000


def test_stats_and_metrics_are_authorized_as_upstreams_subresources(plane):
    pki, admin, node, port = plane
    forbidden = "Forbidden (user=bob, verb=get, resource=nodes, subresource={})\n"
    assert kubelet_get(pki, port, "/stats/summary", token=BOB) == (403, forbidden.format("stats"))
    assert kubelet_get(pki, port, "/metrics/resource", token=BOB) == (403, forbidden.format("metrics"))
    assert kubelet_get(pki, port, "/metrics", token=BOB) == (403, forbidden.format("metrics"))
    assert kubelet_get(pki, port, "/stats/summary", token="") == (401, "Unauthorized\n")
    assert kubelet_get(pki, port, "/stats/nothing")[0] == 404


def test_cadvisor_metrics_label_containers_and_pods(plane):
    pki, admin, node, port = plane
    code, text = kubelet_get(pki, port, "/metrics/cadvisor")
    assert code == 200
    fams = parse_prometheus(text)
    cpu = fams["container_cpu_usage_seconds_total"]
    assert cpu["type"] == "counter" and cpu["help"] == "Cumulative cpu time consumed in seconds."
    busy = [s for s in cpu["samples"] if s[1].get("pod") == "busy" and s[1]["container"] == "c"]
    assert len(busy) == 1 and busy[0][1]["cpu"] == "total" and busy[0][1]["image"] and busy[0][2] > 0
    assert busy[0][1]["id"].startswith("/")
    machine = [s for s in cpu["samples"] if s[1]["id"] == "/"]
    assert len(machine) == 1 and machine[0][1]["pod"] == ""
    rx = [s for s in fams["container_network_receive_bytes_total"]["samples"]
          if s[1]["pod"] == "idle" and s[1]["interface"] == "eth0"]
    assert len(rx) == 1 and rx[0][1]["container"] == ""
    assert fams["machine_cpu_cores"]["samples"][0][2] >= 1


# ---- without a node: the files and texts as the kernel writes them ----

def test_cgroup_v2_files_read_as_upstream(tmp_path):
    from node.kubelet.stats import cgroupfs

    (tmp_path / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (tmp_path / "memory.current").write_text("10000\n")
    (tmp_path / "memory.stat").write_text("anon 4000\nfile 6000\ninactive_file 2500\npgfault 7\npgmajfault 1\n")
    (tmp_path / "memory.max").write_text("max\n")
    cg = cgroupfs.Cgroup(str(tmp_path), str(tmp_path), "", True, "/kubepods/pod1")
    u = cgroupfs.read(cg)
    assert (u.cpu_ns, u.memory_bytes, u.working_set_bytes, u.rss_bytes, u.page_faults, u.major_page_faults,
            u.memory_limit) == (1_500_000, 10000, 7500, 4000, 7, 1, None)
    (tmp_path / "memory.max").write_text("8192\n")
    (tmp_path / "memory.stat").write_text("anon 4000\ninactive_file 20000\n")  # more cache than usage
    u = cgroupfs.read(cg)
    assert (u.working_set_bytes, u.memory_limit) == (0, 8192)
    assert cg.parent().path == "/kubepods"


def test_cgroup_v1_files_read_as_upstream(tmp_path):
    from node.kubelet.stats import cgroupfs
    from node.kubelet.stats.collector import CpuMemory
    from node.kubelet.stats.summary import memory

    cpu, mem = tmp_path / "cpuacct", tmp_path / "memory"
    cpu.mkdir()
    mem.mkdir()
    (cpu / "cpuacct.usage").write_text("123456789\n")
    (mem / "memory.usage_in_bytes").write_text("10000\n")
    (mem / "memory.stat").write_text("cache 6000\nrss 4000\ninactive_file 99\ntotal_rss 4000\n"
                                     "total_inactive_file 3000\ntotal_pgfault 5\ntotal_pgmajfault 0\n")
    (mem / "memory.limit_in_bytes").write_text(f"{(1 << 63) - 4096}\n")
    u = cgroupfs.read(cgroupfs.Cgroup(str(cpu), str(mem)))
    assert (u.cpu_ns, u.memory_bytes, u.working_set_bytes, u.rss_bytes, u.page_faults, u.memory_limit) == \
        (123456789, 10000, 7000, 4000, 5, None)
    assert "availableBytes" not in memory(CpuMemory(u))  # no limit: upstream leaves it out
    assert memory(CpuMemory(u), capacity=20000)["availableBytes"] == 13000


def test_interfaces_leave_out_loopback_and_veths():
    from node.kubelet.stats import netdev

    text = ("Inter-|   Receive                                                |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo "
            "colls carrier compressed\n"
            "    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0 "
            "    0       0          0\n"
            "  eth0:    5000      10    2    0    0     0          0         0     3000       8    1    0    0 "
            "    0       0          0\n"
            "veth12ab:    7       1    0    0    0     0          0         0        9       1    0    0    0 "
            "    0       0          0\n"
            "kpv0a1b2c3d:  7       1    0    0    0     0          0         0        9       1    0    0    0 "
            "    0       0          0\n")
    assert netdev.parse(text) == [netdev.Interface("eth0", 5000, 2, 3000, 1)]


def test_summary_and_resource_metrics_of_a_snapshot():
    """Fields left out where upstream's are (no limit: no availableBytes; no eth0: no inline
    interface), ephemeral storage as the sum of layers, logs and emptyDirs, and a failed pass
    as resource_scrape_error 1."""
    from node.kubelet.metrics import resource_metrics
    from node.kubelet.stats import cgroupfs
    from node.kubelet.stats.collector import ContainerStats, CpuMemory, Network, NodeStats, PodStats, Snapshot
    from node.kubelet.stats.fsusage import FsUsage
    from node.kubelet.stats.netdev import Interface
    from node.kubelet.stats.summary import summary as summary_of

    t = 1_800_000_000_000_000_000
    usage = cgroupfs.Usage(t, 2_000_000_000, 300, 200, 100, 5, 1, None)
    fs = FsUsage(t, 1000, 5000, 10, 90, 100, 1)
    c = ContainerStats("app", "abc", t - 10**9, "busybox", "/x/abc", CpuMemory(usage, 250_000_000), fs, fs)
    net = Network(t, (Interface("net1", 1, 0, 2, 0),))
    pod = PodStats("web", "ns", "u1", t - 2 * 10**9, (c,), CpuMemory(usage), net, 3, (("scratch", fs),), "/x")
    snap = Snapshot(t, NodeStats(t - 10**12, CpuMemory(usage, 10**9)), (pod,))
    s = summary_of(snap, "n1", memory_capacity=1000)
    assert s["node"]["memory"]["availableBytes"] == 800 and s["node"]["cpu"]["usageNanoCores"] == 10**9
    [p] = s["pods"]
    assert p["podRef"] == {"name": "web", "namespace": "ns", "uid": "u1"}
    assert "usageNanoCores" not in p["cpu"] and "availableBytes" not in p["memory"]
    assert p["network"]["name"] == "" and "rxBytes" not in p["network"] and p["network"]["interfaces"][0]["txBytes"] == 2
    assert p["ephemeral-storage"]["usedBytes"] == 30 and p["ephemeral-storage"]["inodesUsed"] == 3
    assert p["volume"] == [{**p["volume"][0], "name": "scratch", "usedBytes": 10}]
    assert p["containers"][0]["startTime"] == "2027-01-15T07:59:59Z"  # metav1.Time: seconds
    small = summary_of(snap, "n1", only_cpu_and_memory=True)
    assert "network" not in small["pods"][0] and "rootfs" not in small["pods"][0]["containers"][0]
    text = resource_metrics(Snapshot(t, snap.node, snap.pods, error="runtime down"))
    assert "resource_scrape_error 1\n" in text
    assert 'container_cpu_usage_seconds_total{container="app",namespace="ns",pod="web"} 2.0 1800000000000\n' in text
