"""The scheduler's filter and score plugins, each alone, over typed messages."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiserver.pb import core_pb2
from controllers.scheduler import plugins
from controllers.scheduler.plugins import NodeInfo

GI = 1024 ** 3


def node(name="n1", cpu="4", memory="8Gi", pods="110", labels=None, taints=(),
         unschedulable=False, ready="True"):
    n = core_pb2.Node()
    n.metadata.name = name
    n.metadata.labels.update(labels or {})
    for key, value, effect in taints:
        n.spec.taints.add(key=key, value=value, effect=effect)
    n.spec.unschedulable = unschedulable
    for res, q in (("cpu", cpu), ("memory", memory), ("pods", pods)):
        if q is not None:
            n.status.allocatable[res] = q
    if ready is not None:
        n.status.conditions.add(type="Ready", status=ready)
    return n


def pod(name="p", ns="default", cpu=None, memory=None, init=(), host_ports=(), node_selector=None,
        tolerations=(), owner="", phase="Pending", terminating=False, containers=1):
    p = core_pb2.Pod()
    p.metadata.name = name
    p.metadata.namespace = ns
    for i in range(containers):
        c = p.spec.containers.add(name=f"c{i}", image="nginx")
        if cpu is not None:
            c.resources.requests["cpu"] = cpu
        if memory is not None:
            c.resources.requests["memory"] = memory
    for i, (icpu, imem) in enumerate(init):
        c = p.spec.init_containers.add(name=f"init{i}", image="busybox")
        if icpu:
            c.resources.requests["cpu"] = icpu
        if imem:
            c.resources.requests["memory"] = imem
    for port, proto, ip in host_ports:
        p.spec.containers[0].ports.add(container_port=port, host_port=port, protocol=proto, host_ip=ip)
    p.spec.node_selector.update(node_selector or {})
    for key, op, value, effect in tolerations:
        p.spec.tolerations.add(key=key, operator=op, value=value, effect=effect)
    if owner:
        p.metadata.owner_references.add(kind="ReplicaSet", name=owner, uid=f"uid-{owner}",
                                         api_version="apps/v1", controller=True)
    p.status.phase = phase
    if terminating:
        p.metadata.deletion_timestamp = "2024-01-01T00:00:00Z"
    return p


def info(n=None, pods=()):
    return NodeInfo.build(n if n is not None else node(), pods)


# ---- requests and NodeInfo ----

@pytest.mark.parametrize("p, want", [
    (pod(), (0, 0, 100, 200 * 1024 * 1024)),
    (pod(cpu="250m", memory="64Mi", containers=2), (500, 128 * 1024 ** 2, 500, 128 * 1024 ** 2)),
    # init containers: the max of (sum of containers, largest init container)
    (pod(cpu="100m", containers=2, init=[("1", None), ("300m", "1Gi")]),
     (1000, GI, 1000, GI)),
    (pod(cpu="1", init=[("500m", None)]), (1000, 0, 1000, 200 * 1024 * 1024)),
])
def test_pod_request(p, want):
    r = plugins.pod_request(p)
    assert (r.milli_cpu, r.memory, r.nonzero_milli_cpu, r.nonzero_memory) == want


def test_node_info_counts_terminating_but_not_finished_pods():
    i = info(pods=[pod("a", cpu="1"), pod("b", cpu="1", terminating=True),
                   pod("c", cpu="1", phase="Succeeded"), pod("d", cpu="1", phase="Failed")])
    assert sorted(i.pods) == ["default/a", "default/b"]
    assert i.requested.milli_cpu == 2000
    # a pod that finishes is removed by adding its new version; removal is idempotent
    i.add_pod(pod("a", cpu="1", phase="Succeeded"))
    i.remove_pod("default/zzz")
    assert sorted(i.pods) == ["default/b"] and i.requested.milli_cpu == 1000
    i.remove_pod("default/b")
    assert i.requested == plugins.PodRequest() and not i.used_ports and not i.owner_counts


def test_node_info_tracks_ports_and_owners():
    i = info(pods=[pod("a", host_ports=[(80, "TCP", "")], owner="rs1"),
                   pod("b", host_ports=[(80, "TCP", "")], owner="rs1", terminating=True)])
    assert i.used_ports == {("0.0.0.0", "TCP", 80): 2}
    assert i.owner_counts == {("default", "uid-rs1"): 1}  # terminating pods do not count for spreading


# ---- filters ----

@pytest.mark.parametrize("n, p, want", [
    (node(), pod(), None),
    (node(unschedulable=True), pod(), plugins.REASON_UNSCHEDULABLE),
    (node(unschedulable=True), pod(tolerations=[(plugins.TAINT_UNSCHEDULABLE, "Exists", "", "NoSchedule")]), None),
    (node(unschedulable=True), pod(tolerations=[("", "Exists", "", "")]), None),
])
def test_filter_node_unschedulable(n, p, want):
    assert plugins.filter_node_unschedulable(p, info(n)) == want


@pytest.mark.parametrize("ready, tolerations, want", [
    ("True", (), None),
    ("False", (), "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"),
    (None, (), "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"),
    ("Unknown", (), "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"),
    # the default tolerations are NoExecute: they do not let a pod onto a not-ready node
    ("False", [(plugins.TAINT_NOT_READY, "Exists", "", "NoExecute")],
     "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"),
    ("False", [(plugins.TAINT_NOT_READY, "Exists", "", "NoSchedule")], None),
    ("Unknown", [("", "Exists", "", "")], None),
])
def test_filter_node_ready(ready, tolerations, want):
    assert plugins.filter_node_ready(pod(tolerations=tolerations), info(node(ready=ready))) == want


@pytest.mark.parametrize("n, bound, p, want", [
    (node(cpu="2"), [], pod(cpu="2"), []),
    (node(cpu="2"), [pod("a", cpu="1500m")], pod(cpu="501m"), ["Insufficient cpu"]),
    (node(cpu="2"), [pod("a", cpu="1500m")], pod(cpu="500m"), []),
    (node(memory="1Gi"), [], pod(memory="1025Mi"), ["Insufficient memory"]),
    (node(pods="1"), [pod("a")], pod(), ["Too many pods"]),
    (node(cpu="1", memory="1Gi", pods="1"), [pod("a")], pod(cpu="2", memory="2Gi"),
     ["Too many pods", "Insufficient cpu", "Insufficient memory"]),
    # a pod without requests fits wherever a pod slot is free, whatever is used
    (node(cpu="1"), [pod("a", cpu="1")], pod(), []),
    # no allocatable at all: nothing fits
    (node(cpu=None, memory=None, pods=None), [], pod(cpu="1m"), ["Too many pods", "Insufficient cpu"]),
    # finished pods release their requests
    (node(cpu="1"), [pod("a", cpu="1", phase="Succeeded")], pod(cpu="1"), []),
    # init containers: the largest one decides when it is above the containers' sum
    (node(cpu="1"), [], pod(cpu="100m", init=[("1100m", None)]), ["Insufficient cpu"]),
])
def test_filter_node_resources_fit(n, bound, p, want):
    i = info(n, bound)
    assert plugins.insufficient_resources(p, i) == want
    assert plugins.filter_node_resources_fit(p, i) == (want[0] if want else None)


@settings(max_examples=200, deadline=None)
@given(alloc=st.integers(0, 8000), mem_alloc=st.integers(0, 4096), max_pods=st.integers(0, 6),
       placed=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 2048)), max_size=8),
       new=st.tuples(st.integers(0, 3000), st.integers(0, 2048)))
def test_resources_fit_never_admits_beyond_allocatable(alloc, mem_alloc, max_pods, placed, new):
    """Pods admitted one by one by the filter never sum beyond allocatable."""
    i = info(node(cpu=f"{alloc}m", memory=f"{mem_alloc}Mi", pods=str(max_pods)))
    for k, (cpu, mem) in enumerate(placed + [new]):
        p = pod(f"p{k}", cpu=f"{cpu}m", memory=f"{mem}Mi")
        if plugins.filter_node_resources_fit(p, i) is None:
            i.add_pod(p)
        assert i.requested.milli_cpu <= alloc
        assert i.requested.memory <= mem_alloc * 1024 * 1024
        assert len(i.pods) <= max_pods


def _affinity_pod(terms=None, selector=None, preferred=()):
    p = pod(node_selector=selector)
    na = p.spec.affinity.node_affinity
    if terms is not None:
        required = na.required_during_scheduling_ignored_during_execution
        required.SetInParent()
        for exprs, fields in terms:
            t = required.node_selector_terms.add()
            for key, op, values in exprs:
                t.match_expressions.add(key=key, operator=op, values=values)
            for key, op, values in fields:
                t.match_fields.add(key=key, operator=op, values=values)
    for weight, exprs in preferred:
        t = na.preferred_during_scheduling_ignored_during_execution.add(weight=weight)
        for key, op, values in exprs:
            t.preference.match_expressions.add(key=key, operator=op, values=values)
    return p


LABELED = node("n1", labels={"zone": "a", "disk": "ssd", "cores": "8"})


@pytest.mark.parametrize("p, fits", [
    (_affinity_pod(), True),
    (_affinity_pod(selector={"zone": "a"}), True),
    (_affinity_pod(selector={"zone": "a", "disk": "hdd"}), False),
    (_affinity_pod(selector={"gpu": "yes"}), False),
    (_affinity_pod(terms=[([("zone", "In", ["a", "b"])], [])]), True),
    (_affinity_pod(terms=[([("zone", "In", ["b"])], [])]), False),
    (_affinity_pod(terms=[([("zone", "NotIn", ["b"])], [])]), True),
    (_affinity_pod(terms=[([("gpu", "NotIn", ["x"])], [])]), True),
    (_affinity_pod(terms=[([("disk", "Exists", [])], [])]), True),
    (_affinity_pod(terms=[([("disk", "DoesNotExist", [])], [])]), False),
    (_affinity_pod(terms=[([("gpu", "DoesNotExist", [])], [])]), True),
    (_affinity_pod(terms=[([("cores", "Gt", ["4"])], [])]), True),
    (_affinity_pod(terms=[([("cores", "Gt", ["8"])], [])]), False),
    (_affinity_pod(terms=[([("cores", "Lt", ["9"])], [])]), True),
    (_affinity_pod(terms=[([("zone", "Lt", ["9"])], [])]), False),  # not an integer
    (_affinity_pod(terms=[([("gpu", "Gt", ["1"])], [])]), False),
    # expressions of a term are ANDed, terms ORed
    (_affinity_pod(terms=[([("zone", "In", ["a"]), ("disk", "In", ["hdd"])], [])]), False),
    (_affinity_pod(terms=[([("zone", "In", ["b"])], []), ([("disk", "In", ["ssd"])], [])]), True),
    (_affinity_pod(terms=[([], [("metadata.name", "In", ["n1"])])]), True),
    (_affinity_pod(terms=[([], [("metadata.name", "NotIn", ["n1"])])]), False),
    (_affinity_pod(terms=[([], [])]), False),  # an empty term matches nothing
    (_affinity_pod(terms=[]), False),
    # nodeSelector and affinity must both match
    (_affinity_pod(selector={"zone": "b"}, terms=[([("disk", "Exists", [])], [])]), False),
])
def test_filter_node_affinity(p, fits):
    assert plugins.filter_node_affinity(p, info(LABELED)) == (None if fits else plugins.REASON_AFFINITY)


TAINTED = node(taints=[("dedicated", "db", "NoSchedule"), ("soft", "x", "PreferNoSchedule")])


@pytest.mark.parametrize("n, tolerations, want", [
    (node(), (), None),
    (TAINTED, (), "node(s) had untolerated taint {dedicated: db}"),
    (TAINTED, [("dedicated", "Equal", "db", "NoSchedule")], None),
    (TAINTED, [("dedicated", "", "db", "")], None),  # "" is Equal; an empty effect matches all
    (TAINTED, [("dedicated", "Equal", "web", "NoSchedule")], "node(s) had untolerated taint {dedicated: db}"),
    (TAINTED, [("dedicated", "Exists", "", "")], None),
    (TAINTED, [("dedicated", "Exists", "", "NoExecute")], "node(s) had untolerated taint {dedicated: db}"),
    (TAINTED, [("", "Exists", "", "")], None),
    (node(taints=[("evict", "", "NoExecute")]), (), "node(s) had untolerated taint {evict: }"),
    (node(taints=[("soft", "", "PreferNoSchedule")]), (), None),  # preferences only score
])
def test_filter_taint_toleration(n, tolerations, want):
    assert plugins.filter_taint_toleration(pod(tolerations=tolerations), info(n)) == want


@pytest.mark.parametrize("used, want, fits", [
    ([], [(80, "TCP", "")], True),
    ([(80, "TCP", "")], [(80, "TCP", "")], False),
    ([(80, "TCP", "")], [(80, "UDP", "")], True),
    ([(80, "TCP", "")], [(81, "TCP", "")], True),
    ([(80, "TCP", "10.0.0.1")], [(80, "TCP", "10.0.0.2")], True),
    ([(80, "TCP", "10.0.0.1")], [(80, "TCP", "10.0.0.1")], False),
    ([(80, "TCP", "10.0.0.1")], [(80, "TCP", "")], False),  # 0.0.0.0 overlaps every address
    ([(80, "TCP", "")], [], True),
])
def test_filter_node_ports(used, want, fits):
    i = info(pods=[pod("old", host_ports=used)])
    assert plugins.filter_node_ports(pod("new", host_ports=want), i) == (None if fits else plugins.REASON_PORTS)


def test_run_filters_stops_at_the_first_refusing_plugin():
    n = node(cpu="1", memory="1Gi", unschedulable=True, taints=[("k", "v", "NoSchedule")])
    assert plugins.run_filters(pod(), info(n)) == [plugins.REASON_UNSCHEDULABLE]
    n.spec.unschedulable = False
    assert plugins.run_filters(pod(cpu="2", memory="2Gi"), info(n)) == ["Insufficient cpu", "Insufficient memory"]
    assert plugins.run_filters(pod(), info(n)) == ["node(s) had untolerated taint {k: v}"]
    assert plugins.run_filters(pod(tolerations=[("k", "Exists", "", "")]), info(n)) == []


def test_failed_scheduling_message():
    reasons = [["Insufficient cpu"]] * 3 + [["node(s) had untolerated taint {k: v}"]] * 2
    assert plugins.failed_scheduling_message(5, reasons) == (
        "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) had untolerated taint {k: v}.")
    assert plugins.failed_scheduling_message(1, [["Too many pods", "Insufficient cpu"]]) == (
        "0/1 nodes are available: 1 Insufficient cpu, 1 Too many pods.")
    assert plugins.failed_scheduling_message(0, []) == "0/0 nodes are available."


# ---- scores ----

def test_score_least_allocated():
    empty = info(node("a", cpu="4", memory="4Gi"))
    half = info(node("b", cpu="4", memory="4Gi"), [pod("x", cpu="2", memory="2Gi")])
    full = info(node("c", cpu="1", memory="1Gi"), [pod("y", cpu="1", memory="1Gi")])
    scores = plugins.score_least_allocated(pod(cpu="1", memory="1Gi"), [empty, half, full])
    assert scores == [75, 25, 0]


def test_score_balanced_allocation():
    even = info(node("a", cpu="4", memory="4Gi"), [pod("x", cpu="1", memory="1Gi")])
    skewed = info(node("b", cpu="4", memory="4Gi"), [pod("y", cpu="3", memory="1Mi")])
    s_even, s_skewed = plugins.score_balanced_allocation(pod(cpu="1", memory="1Gi"), [even, skewed])
    assert s_even == 100 and 0 <= s_skewed < 70


def test_score_selector_spread():
    rs = [pod(f"r{i}", owner="rs1") for i in range(3)]
    other = [pod(f"o{i}", owner="rs2") for i in range(5)]
    a = info(node("a"), rs[:2] + other)
    b = info(node("b"), rs[2:])
    c = info(node("c"), other[:1])
    assert plugins.score_selector_spread(pod("new", owner="rs1"), [a, b, c]) == [0, 50, 100]
    # other namespaces' pods with the same owner uid do not count; nor do terminating ones
    d = info(node("d"), [pod("t", owner="rs1", terminating=True), pod("u", ns="other", owner="rs1")])
    assert plugins.score_selector_spread(pod("new", owner="rs1"), [a, d]) == [0, 100]
    assert plugins.score_selector_spread(pod("orphan"), [a, b]) == [0, 0]


def test_score_node_affinity_preferred():
    p = _affinity_pod(preferred=[(10, [("zone", "In", ["a"])]), (30, [("disk", "In", ["ssd"])])])
    infos = [info(node("x", labels={"zone": "a"})), info(node("y", labels={"zone": "a", "disk": "ssd"})),
             info(node("z"))]
    assert plugins.score_node_affinity_preferred(p, infos) == [25, 100, 0]
    assert plugins.score_node_affinity_preferred(pod(), infos) == [0, 0, 0]


def test_score_taint_toleration():
    infos = [info(node("a")), info(node("b", taints=[("s", "", "PreferNoSchedule")])),
             info(node("c", taints=[("s", "", "PreferNoSchedule"), ("t", "", "PreferNoSchedule")])),
             info(node("d", taints=[("hard", "", "NoSchedule")]))]
    assert plugins.score_taint_toleration(pod(), infos) == [100, 50, 0, 100]
    assert plugins.score_taint_toleration(pod(tolerations=[("s", "Exists", "", "")]), infos) == [100, 100, 0, 100]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 16), st.integers(0, 16), st.integers(0, 4)), min_size=1, max_size=6),
       st.integers(0, 4))
def test_scores_stay_within_0_and_100(nodes, cpu):
    infos = [info(node(f"n{i}", cpu=str(c), memory=f"{c}Gi",
                       taints=[("t", "", "PreferNoSchedule")] * (k % 2)),
                  [pod(f"p{i}-{j}", cpu="1", owner="rs") for j in range(used)])
             for i, (c, used, k) in enumerate(nodes)]
    p = pod("new", cpu=str(cpu), owner="rs")
    for _, score, _ in plugins.SCORES:
        values = score(p, infos)
        assert len(values) == len(infos) and all(0 <= v <= 100 for v in values)


def test_select_host_picks_a_best_node_at_random_among_ties():
    infos = [info(node(name)) for name in "abcd"]
    rng = random.Random(7)
    picks = {plugins.select_host(infos, [5, 9, 9, 1], rng).name for _ in range(200)}
    assert picks == {"b", "c"}
    with pytest.raises(ValueError):
        plugins.select_host([], [])


def test_score_nodes_weighs_plugins():
    # a PreferNoSchedule taint (weight 3) outweighs a little less free cpu (weight 1)
    tainted = info(node("t", cpu="8", taints=[("s", "", "PreferNoSchedule")]))
    busy = info(node("b", cpu="8"), [pod("x", cpu="2")])
    totals = plugins.score_nodes(pod(cpu="1"), [tainted, busy])
    assert totals[1] > totals[0]
