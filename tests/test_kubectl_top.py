"""`kubectl top node` and `kubectl top pod`: the resource metrics API (metrics.k8s.io/v1beta1)
the apiserver serves from its kubelets' /metrics/resource, as metrics-server does.

First the pieces alone (the text format read back, a scrape decoded, two points to a rate,
the scrape rounds, the quantities and durations as Kubernetes writes them); then the secure
plane and real node of test_kubelet_auth (housekeeping at 1 s) with kubectl: the node's figures,
a spinning pod over a quarter core and an idle one under 5%, --containers, a label selector, a
hollow node's and an unknown pod's NotFound, and a user RBAC gives no metrics refused. The plane
tests need root, runc, conmon, busybox-static; the CPU shares make them timing-bound (SERIAL)."""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest

from apiserver.pb import core_pb2
from apiserver.quantity import parse_quantity
from apiserver.resourcemetrics.decode import Batch, Point, decode
from apiserver.resourcemetrics.scraper import Scraper
from apiserver.resourcemetrics.store import Store, usage
from apiserver.rest import discovery, metricsapi
from harness.etcd_client import wait_until as poll
from harness.nodes import need_runtime, running_pod
from harness.procs import Registry
from promtext import parse as promparse
from tests.test_kubelet_auth import BOB, secure_node
from tests.test_node_proxy import kubectl

NS = "kubectl-top"
TIMEOUT = 60.0
S = 1_000_000_000  # ns a second

# ---- the pieces ----

KUBELET_TEXT = """# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="c",namespace="ns",pod="p"} 2.5 1700000010000
container_cpu_usage_seconds_total{container="x",namespace="ns",pod="half"} 1 1700000010000
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="c",namespace="ns",pod="p"} 1.2288e+06 1700000010000
container_start_time_seconds{container="c",namespace="ns",pod="p"} 1.7e+09
node_cpu_usage_seconds_total 1000.25 1700000010000
node_memory_working_set_bytes 4.294967296e+09 1700000010000
resource_scrape_error 0
"""


def test_the_text_format_reads_back_with_labels_escapes_and_times():
    got = list(promparse.samples('# HELP a b\n\na_total{x="q\\"\\\\\\n",y="2"} +Inf 17\nb 3.5\nc{} NaN\n'))
    assert got[0] == promparse.Sample("a_total", {"x": 'q"\\\n', "y": "2"}, math.inf, 17)
    assert got[1] == promparse.Sample("b", {}, 3.5, None)
    assert got[2].name == "c" and math.isnan(got[2].value)
    for bad in ('a{x=1} 2', 'a{x="1" 2', "a 1 2 3", "a one", "{x=\"1\"} 2"):
        with pytest.raises(ValueError):
            list(promparse.samples(bad))


def test_a_scrape_decodes_to_node_and_container_points():
    batch = decode(KUBELET_TEXT, "n0", 1)
    assert batch.nodes == {"n0": Point(1700000010 * S, 1000_250_000_000, 4 << 30)}
    # the pod whose container has no memory reading goes whole, as metrics-server drops it
    assert batch.pods == {("ns", "p"): {"c": Point(1700000010 * S, 2_500_000_000, 1200 << 10, 1700000000 * S)}}
    assert decode("node_cpu_usage_seconds_total 0 5\nnode_memory_working_set_bytes 9 5\n", "n0", 1).nodes == {}


def _batch(t: float, node_cpu: float, container_cpu: float, start: float = 100.0) -> Batch:
    b = Batch()
    b.nodes["n0"] = Point(int(t * S), int(node_cpu * S), 1 << 30)
    b.pods[("ns", "p")] = {"c": Point(int(t * S), int(container_cpu * S), 1 << 20, int(start * S))}
    return b


def test_cpu_is_the_rate_between_two_points_and_one_point_is_no_metrics():
    store = Store(15 * S)
    store.store(_batch(1000, 50, 5))
    assert store.node("n0") is None and store.pod("ns", "p") is None and store.incomplete()
    store.store(_batch(1000, 50, 5))  # the kubelet has not read again: nothing moves
    assert store.node("n0") is None
    store.store(_batch(1002, 51, 6.5))
    assert store.node("n0") == usage(Point(1002 * S, 51 * S, 1 << 30), Point(1000 * S, 50 * S, 1 << 30))
    assert store.node("n0").cpu_nanocores == 500_000_000 and store.node("n0").window_ns == 2 * S
    [(name, u)] = store.pod("ns", "p")
    assert (name, u.cpu_nanocores, u.memory) == ("c", 750_000_000, 1 << 20) and not store.incomplete()
    store.store(_batch(1004, 52, 0.5, start=1003))  # the container restarted: no rate across it
    assert store.pod("ns", "p") is None and store.node("n0").cpu_nanocores == 500_000_000
    store.store(Batch())  # a round that did not read them: gone
    assert store.node("n0") is None and store.pod("ns", "p") is None


def test_a_new_container_is_measured_from_its_start():
    store = Store(15 * S)
    store.store(_batch(1012, 50, 3, start=1000))  # 12 s old: between 10 s and the resolution
    [(_, u)] = store.pod("ns", "p")
    assert u.cpu_nanocores == 250_000_000 and u.window_ns == 12 * S
    store.store(_batch(1020, 50, 3, start=1015))  # 5 s old: too young to say
    assert store.pod("ns", "p") is None


def test_rounds_are_shared_on_demand_and_a_failing_kubelet_is_left_out():
    now = [0.0]
    calls: list[str] = []

    async def fetch(node: str, port: int) -> str:
        calls.append(node)
        await asyncio.sleep(0.01)
        if node == "down":
            raise OSError("connection refused")
        if node == "slow":
            await asyncio.sleep(10)
        t = 1000 + now[0]  # the kubelet reads again each time; 0.1 core in use
        ms = int(t * 1000)
        return f"node_cpu_usage_seconds_total {t / 10} {ms}\nnode_memory_working_set_bytes 4096 {ms}\n"

    async def main():
        scraper = Scraper(fetch, timeout=0.2, clock=lambda: now[0])
        targets = {"up": 1, "down": 2, "slow": 3}
        await asyncio.gather(*(scraper.fresh(targets) for _ in range(5)))  # one round for all five
        assert sorted(calls) == ["down", "slow", "up"] and scraper.rounds == 1
        now[0] = 0.5
        await scraper.fresh(targets)  # incomplete, but under RETRY since the last round
        assert scraper.rounds == 1
        now[0] = 2.0
        store = await scraper.fresh(targets)  # incomplete: again
        assert scraper.rounds == 2 and store.node("up").cpu_nanocores == 100_000_000
        assert store.node("down") is None and store.node("slow") is None
        now[0] = 14.0
        await scraper.fresh({"up": 1})  # complete: nothing until the resolution
        assert scraper.rounds == 2
        now[0] = 17.5
        await scraper.fresh({"up": 1})
        assert scraper.rounds == 3 and scraper.store.node("up").window_ns == int(15.5 * S)

    asyncio.run(main())


def test_quantities_and_durations_as_kubernetes_writes_them():
    assert [metricsapi.cpu_quantity(n) for n in (123456789, 250_000_000, 2 * S, 123000, 0)] == \
        ["123456789n", "250m", "2", "123u", "0"]
    assert [metricsapi.memory_quantity(n) for n in (12345 << 10, 3 << 30, 2000, 1000, 0)] == \
        ["12345Ki", "3Gi", "2000", "1k", "0"]
    assert [metricsapi.go_duration(n) for n in (15_012_000_000, 60_500_000_000, 500_000_000, 3600 * S)] == \
        ["15.012s", "1m0.5s", "500ms", "1h0m0s"]


def test_discovery_lists_the_group_as_an_aggregated_apiservice_shows_it():
    assert discovery.api_group("metrics.k8s.io")["preferredVersion"] == {
        "groupVersion": "metrics.k8s.io/v1beta1", "version": "v1beta1"}
    listed = discovery.resource_list("metrics.k8s.io/v1beta1")["resources"]
    assert listed == [{"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics",
                       "verbs": ["get", "list"]},
                      {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics",
                       "verbs": ["get", "list"]}]


# ---- through kubectl, on a real node ----

def _pod(name: str, labels: dict, *scripts: str, node: str = "") -> core_pb2.Pod:
    pod = core_pb2.Pod(metadata={"name": name, "namespace": NS, "labels": labels})
    pod.spec.termination_grace_period_seconds = 0
    pod.spec.automount_service_account_token = False
    if node:
        pod.spec.node_name = node
    for i, script in enumerate(scripts):
        pod.spec.containers.add(name=("main", "side")[i], image="busybox", command=["sh", "-c", script])
    return pod


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    reg = Registry()
    tmp = tmp_path_factory.mktemp("kubectltop")
    try:
        with secure_node(tmp, reg, NS, "--housekeeping-interval", "1s") as (api, pki, admin, node):
            hollow = core_pb2.Node(metadata={"name": "hollow-0", "labels": {"kind": "hollow"}})
            admin.create(hollow)  # no kubelet endpoint: never any metrics
            admin.create(_pod("busy", {"app": "busy"}, "while :; do :; done"))
            admin.create(_pod("idle", {"app": "idle"}, "sleep 3600", "sleep 3600"))
            admin.create(_pod("ghost", {"app": "ghost"}, "sleep 3600", node="hollow-0"))
            for name in ("busy", "idle"):
                poll(lambda: running_pod(admin, name, NS), TIMEOUT, what=f"pod {name} running")
            try:
                yield api, admin, node, tmp
            finally:
                # the spinning pod goes first: it costs the machine a core
                admin.delete("pods", "busy", NS, grace_period_seconds=0)
    finally:
        reg.cleanup()


def _cpu_m(text: str) -> int:
    assert text.endswith("m"), text
    return int(text[:-1])


def _mem_mi(text: str) -> int:
    assert text.endswith("Mi"), text
    return int(text[:-2])


def _rows(out: str) -> dict[str, list[str]]:
    lines = out.strip().splitlines()
    return {cols[0]: cols[1:] for cols in (line.split() for line in lines[1:])}


def _top(api, tmp, *args: str, token: str = ""):
    return kubectl(api, tmp, "top", *args, token=token)


@pytest.mark.process
def test_kubectl_top_node_shows_the_real_nodes_usage(plane):
    api, admin, node, tmp = plane

    def shown():
        out = _top(api, tmp, "node")
        return out if out.returncode == 0 and node.name in out.stdout else None

    out = poll(shown, TIMEOUT, what="kubectl top node with the node's metrics")
    assert out.stdout.split()[:5] == ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
    rows = _rows(out.stdout)
    cpu, cpu_pct, mem, mem_pct = rows[node.name]
    assert _cpu_m(cpu) > 0 and _mem_mi(mem) > 0 and cpu_pct.endswith("%") and mem_pct.endswith("%")
    assert rows["hollow-0"] == ["<unknown>"] * 4  # kubectl's line for a node without metrics

    raw = json.loads(kubectl(api, tmp, "get", "--raw", f"/apis/metrics.k8s.io/v1beta1/nodes/{node.name}").stdout)
    assert (raw["kind"], raw["apiVersion"], raw["metadata"]["name"]) == ("NodeMetrics", "metrics.k8s.io/v1beta1",
                                                                       node.name)
    assert re.fullmatch(r"\d+[num]?", raw["usage"]["cpu"]) and re.fullmatch(r"\d+(Ki|Mi|Gi)?", raw["usage"]["memory"])
    assert re.fullmatch(r"(\d+m)?\d+(\.\d+)?s", raw["window"]), raw["window"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", raw["timestamp"])
    assert raw["metadata"]["labels"] == dict(admin.get("nodes", node.name, "").metadata.labels)
    listed = json.loads(kubectl(api, tmp, "get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes").stdout)
    assert [i["metadata"]["name"] for i in listed["items"]] == [node.name]  # no hollow node
    selected = kubectl(api, tmp, "get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=kind%3Dhollow")
    assert json.loads(selected.stdout)["items"] == []

    out = _top(api, tmp, "node", "hollow-0")
    assert out.returncode != 0
    assert 'Error from server (NotFound): nodemetrics.metrics.k8s.io "hollow-0" not found' in out.stderr
    out = _top(api, tmp, "node", "nosuch")
    assert 'Error from server (NotFound): node "nosuch" not found' in out.stderr


@pytest.mark.process
def test_kubectl_top_pod_shows_a_spinning_pod_busy_and_an_idle_one_not(plane):
    api, admin, node, tmp = plane

    def rated():
        out = _top(api, tmp, "pod", "-n", NS)
        if out.returncode != 0:
            return None
        rows = _rows(out.stdout)
        if {"busy", "idle"} - set(rows) or _cpu_m(rows["busy"][0]) <= 250 or _cpu_m(rows["idle"][0]) >= 50:
            return None
        return rows

    rows = poll(rated, TIMEOUT, what="the busy pod over a quarter core, the idle one under 5%")
    assert "ghost" not in rows  # bound to the hollow node: never read

    out = _top(api, tmp, "pod", "idle", "-n", NS, "--containers")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:4] == ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    assert [line.split()[:2] for line in out.stdout.strip().splitlines()[1:]] == [["idle", "main"], ["idle", "side"]]

    out = _top(api, tmp, "pod", "-n", NS, "-l", "app=busy")
    assert out.returncode == 0, out.stderr
    assert list(_rows(out.stdout)) == ["busy"]

    base = f"/apis/metrics.k8s.io/v1beta1/namespaces/{NS}/pods"
    raw = json.loads(kubectl(api, tmp, "get", "--raw", f"{base}?fieldSelector=metadata.name%3Didle").stdout)
    [item] = raw["items"]
    assert raw["kind"] == "PodMetricsList" and item["metadata"]["labels"] == {"app": "idle"}
    assert [c["name"] for c in item["containers"]] == ["main", "side"]
    assert all(re.fullmatch(r"\d+[num]?", c["usage"]["cpu"]) for c in item["containers"])
    assert all(parse_quantity(c["usage"]["memory"]) > 0 for c in item["containers"])  # a shell's working set
    bad = kubectl(api, tmp, "get", "--raw", f"{base}?fieldSelector=spec.nodeName%3Dx")
    assert "field label not supported: spec.nodeName" in bad.stderr
    table = kubectl(api, tmp, "get", "podmetrics.metrics.k8s.io", "-n", NS, "idle")
    assert table.returncode == 0, table.stderr
    assert table.stdout.split()[:4] == ["NAME", "CPU", "MEMORY", "WINDOW"] and table.stdout.split()[4] == "idle"


@pytest.mark.process
def test_a_pod_without_metrics_is_not_found_and_a_user_without_rights_is_refused(plane):
    api, admin, node, tmp = plane
    out = _top(api, tmp, "pod", "nosuch", "-n", NS)
    assert out.returncode != 0 and 'Error from server (NotFound): pods "nosuch" not found' in out.stderr
    ghost = kubectl(api, tmp, "get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{NS}/pods/ghost")
    assert f'Error from server (NotFound): podmetrics.metrics.k8s.io "{NS}/ghost" not found' in ghost.stderr
    watch = kubectl(api, tmp, "get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes?watch=true")
    assert ('Error from server (MethodNotAllowed): watch is not supported on resources of kind '
            '"nodes.metrics.k8s.io"') in watch.stderr, watch.stderr

    # bob may view NS (view aggregates system:aggregated-metrics-reader), nothing of nodes
    out = _top(api, tmp, "node", token=BOB)
    assert out.returncode != 0
    assert ('Error from server (Forbidden): nodes.metrics.k8s.io is forbidden: User "bob" cannot list '
            'resource "nodes" in API group "metrics.k8s.io" at the cluster scope') in out.stderr, out.stderr
    out = _top(api, tmp, "pod", "-n", "default", token=BOB)
    assert 'cannot list resource "pods" in API group "metrics.k8s.io" in the namespace "default"' in out.stderr
    out = poll(lambda: (o := _top(api, tmp, "pod", "-n", NS, token=BOB)).returncode == 0 and o, TIMEOUT,
               what="bob's kubectl top pod in the namespace he may view")
    assert {"busy", "idle"} <= set(_rows(out.stdout))
