"""Inter-pod affinity/anti-affinity and topology spread constraints: the plugins alone
(scores as upstream normalizes them), then the scheduler against a real etcdlite member
and apiserver (Nodes with zone and hostname labels created through the client, no
kubelets), and the fields through the REST API: JSON names, the create-time merge of
matchLabelKeys, upstream's validation errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from apiserver.client import Client
from apiserver.pb import core_pb2
from apiserver.rest.kubeconfig import write_kubeconfig
from controllers.scheduler.cycle import CycleState
from controllers.scheduler.plugins import NodeInfo
from controllers.scheduler.scheduler import Scheduler, SchedulerCache
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite

HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"


def node(name, zone=None, cpu="4", memory="8Gi"):
    n = core_pb2.Node()
    n.metadata.name = name
    n.metadata.labels[HOSTNAME] = name
    if zone:
        n.metadata.labels[ZONE] = zone
    n.status.allocatable.update({"cpu": cpu, "memory": memory, "pods": "110"})
    n.status.capacity.update(n.status.allocatable)
    n.status.conditions.add(type="Ready", status="True", reason="KubeletReady")
    return n


def pod(name, labels, *, ns="default", scheduler="", node_name="", cpu=None, memory=None,
        on=None, anti=(), affinity=(), preferred=(), spread=()):
    """``anti``/``affinity``: required (topologyKey, matchLabels) terms; ``preferred``:
    (weight, "affinity"|"anti", topologyKey, matchLabels); ``spread``: (topologyKey,
    maxSkew, whenUnsatisfiable, matchLabels[, minDomains])."""
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = name, ns
    p.metadata.labels.update(labels)
    c = p.spec.containers.add(name="main", image="nginx:1.27")
    if cpu:
        c.resources.requests["cpu"] = cpu
    if memory:
        c.resources.requests["memory"] = memory
    p.spec.scheduler_name, p.spec.node_name = scheduler, node_name
    if on:
        p.spec.node_selector[HOSTNAME] = on
    for key, match in anti:
        t = p.spec.affinity.pod_anti_affinity.required_during_scheduling_ignored_during_execution.add(topology_key=key)
        t.label_selector.match_labels.update(match)
    for key, match in affinity:
        t = p.spec.affinity.pod_affinity.required_during_scheduling_ignored_during_execution.add(topology_key=key)
        t.label_selector.match_labels.update(match)
    for weight, kind, key, match in preferred:
        group = p.spec.affinity.pod_affinity if kind == "affinity" else p.spec.affinity.pod_anti_affinity
        w = group.preferred_during_scheduling_ignored_during_execution.add(weight=weight)
        w.pod_affinity_term.topology_key = key
        w.pod_affinity_term.label_selector.match_labels.update(match)
    for key, skew, when, match, *min_domains in spread:
        s = p.spec.topology_spread_constraints.add(max_skew=skew, topology_key=key, when_unsatisfiable=when)
        s.label_selector.match_labels.update(match)
        if min_domains:
            s.min_domains = min_domains[0]
    return p


# ---- the plugins alone ----

def infos_of(*placements):
    """NodeInfos of nodes (name, zone) with their pods."""
    return [NodeInfo.build(node(name, zone), pods) for (name, zone), pods in placements]


def test_affinity_filter_reasons_and_the_first_pod_of_a_group():
    web = pod("w0", {"app": "web"}, node_name="a", anti=[(HOSTNAME, {"app": "web"})])
    infos = infos_of((("a", "z1"), [web]), (("b", "z1"), []), (("c", "z2"), []))
    # the pod's own anti-affinity; the placed pod's anti-affinity against an unrelated pod's labels
    assert [CycleState(pod("w1", {"app": "web"}, anti=[(HOSTNAME, {"app": "web"})]), infos).filter(i)
            for i in infos] == [["node(s) didn't match pod anti-affinity rules"], [], []]
    assert [CycleState(pod("x", {"app": "web"}), infos).filter(i) for i in infos] == [
        ["node(s) didn't satisfy existing pods anti-affinity rules"], [], []]
    assert [CycleState(pod("y", {"app": "db"}), infos).filter(i) for i in infos] == [[], [], []]
    # required affinity: the zone of a matching pod only
    assert [CycleState(pod("c", {"app": "cache"}, affinity=[(ZONE, {"app": "web"})]), infos).filter(i)
            for i in infos] == [[], [], ["node(s) didn't match pod affinity rules"]]
    # nothing matches anywhere: only a pod matching its own terms may start the group
    assert [CycleState(pod("g", {"app": "g"}, affinity=[(ZONE, {"app": "g"})]), infos).filter(i)
            for i in infos] == [[], [], []]
    assert all(CycleState(pod("h", {"app": "h"}, affinity=[(ZONE, {"app": "g"})]), infos).filter(i)
               for i in infos)


def test_preferred_terms_score_by_weight_normalized_between_min_and_max():
    infos = infos_of((("a", "z1"), [pod("d", {"app": "db"}, node_name="a")]),
                     (("b", "z2"), [pod("f", {"app": "front"}, node_name="b")]),
                     (("c", "z3"), []))
    p = pod("p", {"app": "api"}, preferred=[(80, "affinity", ZONE, {"app": "db"}),
                                            (20, "anti", ZONE, {"app": "front"})])
    # raw sums: z1 +80, z2 -20, z3 0 -> (raw - min) * 100 / (max - min)
    assert CycleState(p, infos).affinity.score(infos) == [100, 0, 20]
    # a placed pod's preferred anti-affinity against the incoming pod's labels counts too
    infos[2].add_pod(pod("e", {"app": "edge"}, node_name="c", preferred=[(50, "anti", ZONE, {"app": "api"})]))
    assert CycleState(p, infos).affinity.score(infos) == [100, 23, 0]
    assert CycleState(pod("q", {"app": "other"}), infos).affinity.score(infos) == [0, 0, 0]


def test_spread_filter_counts_domains_and_min_domains():
    infos = infos_of((("a", "z1"), [pod("w0", {"app": "web"}, node_name="a")]),
                     (("b", "z1"), [pod("w1", {"app": "web"}, node_name="b")]),
                     (("c", "z2"), [pod("w2", {"app": "web"}, node_name="c")]))
    infos.append(NodeInfo.build(node("bare")))  # no zone label
    one = pod("p", {"app": "web"}, spread=[(ZONE, 1, "DoNotSchedule", {"app": "web"})])
    assert [CycleState(one, infos).filter(i) for i in infos] == [
        ["node(s) didn't match pod topology spread constraints"]] * 2 + [[], [
            "node(s) didn't match pod topology spread constraints (missing required label)"]]
    # minDomains 3 with two zones: the global minimum counts as 0
    three = pod("p", {"app": "web"}, spread=[(ZONE, 2, "DoNotSchedule", {"app": "web"}, 3)])
    assert [CycleState(three, infos).filter(i)[:1] for i in infos[:3]] == [
        ["node(s) didn't match pod topology spread constraints"]] * 2 + [[]]
    # ScheduleAnyway: z1 holds 2, z2 1 -> round(count * log(2 + 2)), then 100 * (max + min - s) / max
    soft = pod("p", {"app": "web"}, spread=[(ZONE, 1, "ScheduleAnyway", {"app": "web"})])
    assert CycleState(soft, infos).spread.score(infos, infos) == [33, 33, 100, 0]


def test_cache_keeps_the_nodes_holding_pods_with_affinity_apart():
    cache = SchedulerCache()
    for name in ("a", "b"):
        cache.set_node(node(name, "z1"))
    anti = pod("w", {"app": "web"}, node_name="a", anti=[(HOSTNAME, {"app": "web"})])
    cache.assume(anti)
    cache.add_pod(pod("plain", {"app": "web"}, node_name="b"))
    assert [i.name for i in cache.node_infos_with_affinity()] == ["a"]
    info = cache.node_info("a")
    assert list(info.pods_with_affinity) == list(info.pods_with_required_anti_affinity) == ["default/w"]
    cache.forget("default/w")
    assert cache.node_infos_with_affinity() == [] and not info.pods_with_required_anti_affinity
    # what the cycle finds by itself equals what the cache kept
    cache.add_pod(anti)
    infos = cache.node_infos()
    kept = CycleState(pod("x", {"app": "web"}), infos, cache.node_infos_with_affinity())
    found = CycleState(pod("x", {"app": "web"}), infos)
    assert [kept.filter(i) for i in infos] == [found.filter(i) for i in infos] == [
        ["node(s) didn't satisfy existing pods anti-affinity rules"], []]


# ---- against a real apiserver ----

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "affinity") as api:
        yield api


@pytest.fixture(scope="module")
def c(plane):
    with Client(plane.endpoint, timeout=30) as client:
        yield client


@pytest.fixture
def cluster(c, request):
    """A namespace, the given nodes (no others) and a scheduler of this test's own name."""
    name = request.node.name.replace("_", "-").lower()[:40].strip("-")
    c.create(core_pb2.Namespace(metadata={"name": name}))
    for n in c.list("nodes").items:
        c.delete("nodes", n.metadata.name)
    started = []

    def start(*nodes):
        for n in nodes:
            c.create(n)
        s = Scheduler(Client(c.server, timeout=30), scheduler_name=name, initial_backoff=0.2,
                      max_backoff=1.0).start()
        started.append(s)
        return s

    yield name, start
    for s in started:
        s.stop()
        s.client.close()


def create(c, ns, p):
    p.metadata.namespace = ns
    p.spec.scheduler_name = ns
    return c.create(p)


def placement(c, ns, prefix=""):
    return {p.metadata.name: p.spec.node_name for p in c.list("pods", ns).items
            if p.metadata.name.startswith(prefix)}


def failed_messages(c, ns, name):
    return [e.message for e in c.list("events", ns).items
            if e.reason == "FailedScheduling" and e.involved_object.name == name]


@pytest.mark.process
def test_anti_affinity_spreads_replicas_one_per_node_and_leaves_the_extra_pending(c, cluster):
    ns, start = cluster
    start(node("n1", "z1"), node("n2", "z1"), node("n3", "z2"))
    for i in range(4):
        create(c, ns, pod(f"web{i}", {"app": "web"}, anti=[(HOSTNAME, {"app": "web"})]))
    wait_until(lambda: sum(1 for n in placement(c, ns).values() if n) == 3, timeout=20, what="3 bound")
    messages = wait_until(lambda: [m for i in range(4) for m in failed_messages(c, ns, f"web{i}")],
                          timeout=20, what="FailedScheduling")
    assert messages[0] == "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    placed = placement(c, ns)
    assert sorted(n for n in placed.values() if n) == ["n1", "n2", "n3"]
    pending = next(name for name, n in placed.items() if not n)
    cond = next(x for x in c.get("pods", pending, ns).status.conditions if x.type == "PodScheduled")
    assert (cond.status, cond.reason) == ("False", "Unschedulable") and "anti-affinity" in cond.message
    # a pod of another app is not kept off those nodes by their anti-affinity
    create(c, ns, pod("db", {"app": "db"}))
    wait_until(lambda: c.get("pods", "db", ns).spec.node_name, timeout=20, what="db bound")
    # one web pod gone: the pending one takes its node
    freed = placed["web0"] or placed["web1"]
    victim = next(name for name, n in placed.items() if n == freed)
    c.delete("pods", victim, ns, grace_period_seconds=0)
    wait_until(lambda: c.get("pods", pending, ns).spec.node_name == freed, timeout=20,
               what="the pending replica placed on the freed node")


@pytest.mark.process
def test_required_affinity_co_locates_by_zone_and_waits_for_its_target(c, cluster):
    ns, start = cluster
    start(node("a1", "z1"), node("a2", "z1"), node("b1", "z2"), node("b2", "z2"))
    # the target does not exist yet: unschedulable, then placed once it is
    create(c, ns, pod("early", {"app": "cache"}, affinity=[(ZONE, {"app": "db"})]))
    wait_until(lambda: failed_messages(c, ns, "early"), timeout=20, what="early refused")
    assert failed_messages(c, ns, "early")[0] == (
        "0/4 nodes are available: 4 node(s) didn't match pod affinity rules.")
    create(c, ns, pod("db", {"app": "db"}, on="b2"))
    for i in range(3):
        create(c, ns, pod(f"cache{i}", {"app": "cache"}, affinity=[(ZONE, {"app": "db"})]))
    # the first of a group with affinity to itself starts it anywhere; the others follow its zone
    for i in range(3):
        create(c, ns, pod(f"group{i}", {"app": "group"}, affinity=[(ZONE, {"app": "group"})]))
    wait_until(lambda: all(placement(c, ns).values()) and len(placement(c, ns)) == 8, timeout=20,
               what="all bound")
    placed = placement(c, ns)
    assert {placed[n] for n in ("early", "cache0", "cache1", "cache2")} <= {"b1", "b2"}
    group_zones = {placed[f"group{i}"][0] for i in range(3)}
    assert len(group_zones) == 1


@pytest.mark.process
def test_topology_spread_max_skew_one_balances_zones(c, cluster):
    ns, start = cluster
    start(node("z1a", "z1"), node("z1b", "z1"), node("z2a", "z2"), node("z3a", "z3"), node("nozone"))
    for i in range(9):
        create(c, ns, pod(f"s{i}", {"app": "s"}, spread=[(ZONE, 1, "DoNotSchedule", {"app": "s"})]))
    wait_until(lambda: all(placement(c, ns).values()) and len(placement(c, ns)) == 9, timeout=20,
               what="9 bound")
    zones = Counter(n[:2] for n in placement(c, ns).values())
    assert zones == {"z1": 3, "z2": 3, "z3": 3}
    # minDomains 4 with 3 zones: the minimum counts as 0, so no zone may take a 4th
    create(c, ns, pod("more", {"app": "s"}, spread=[(ZONE, 1, "DoNotSchedule", {"app": "s"}, 4)]))
    wait_until(lambda: failed_messages(c, ns, "more"), timeout=20, what="more refused")
    assert failed_messages(c, ns, "more")[0] == (
        "0/5 nodes are available: 4 node(s) didn't match pod topology spread constraints, "
        "1 node(s) didn't match pod topology spread constraints (missing required label).")


@pytest.mark.process
def test_schedule_anyway_prefers_the_emptier_zone_over_free_resources(c, cluster):
    ns, start = cluster
    start(node("a", "z1"), node("b", "z2"))
    for i in range(3):
        create(c, ns, pod(f"batch{i}", {"app": "batch"}, on="a"))
    create(c, ns, pod("filler", {"app": "filler"}, on="b", cpu="3", memory="6Gi"))
    wait_until(lambda: all(placement(c, ns).values()), timeout=20, what="setup bound")
    # without the constraint, free resources win: a
    create(c, ns, pod("control", {"app": "control"}))
    # with it, the zone with no batch pod wins despite them
    create(c, ns, pod("spread", {"app": "batch"}, spread=[(ZONE, 1, "ScheduleAnyway", {"app": "batch"})]))
    wait_until(lambda: all(placement(c, ns).values()) and len(placement(c, ns)) == 6, timeout=20,
               what="both bound")
    placed = placement(c, ns)
    assert (placed["control"], placed["spread"]) == ("a", "b")


# ---- the fields through the REST API ----

POD_JSON = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "rt", "labels": {"app": "rt", "rev": "7"}},
    "spec": {
        "schedulerName": "nobody",
        "containers": [{"name": "main", "image": "nginx:1.27"}],
        "affinity": {
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": ZONE,
                "namespaces": ["other"], "namespaceSelector": {"matchLabels": {"team": "a"}}}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 30, "podAffinityTerm": {
                    "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["rt"]}]},
                    "topologyKey": HOSTNAME, "matchLabelKeys": ["rev"]}}]},
        },
        "topologySpreadConstraints": [{
            "maxSkew": 2, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "rt"}}, "minDomains": 2,
            "nodeAffinityPolicy": "Ignore", "nodeTaintsPolicy": "Honor", "matchLabelKeys": ["rev"]}],
    },
}


def rest(plane, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{plane.port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.process
def test_rest_round_trip_keeps_affinity_and_spread_under_upstream_json_names(c, plane):
    c.create(core_pb2.Namespace(metadata={"name": "affinity-rest"}))
    status, created = rest(plane, "POST", "/api/v1/namespaces/affinity-rest/pods", POD_JSON)
    assert status == 201, created
    status, got = rest(plane, "GET", "/api/v1/namespaces/affinity-rest/pods/rt")
    assert status == 200
    spec = got["spec"]
    assert spec["topologySpreadConstraints"] == POD_JSON["spec"]["topologySpreadConstraints"]
    assert spec["affinity"]["podAffinity"] == POD_JSON["spec"]["affinity"]["podAffinity"]
    # matchLabelKeys become a matchExpression of the pod's own value on create, as upstream does
    term = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["weight"] == 30 and term["podAffinityTerm"]["matchLabelKeys"] == ["rev"]
    assert term["podAffinityTerm"]["labelSelector"]["matchExpressions"] == [
        {"key": "app", "operator": "In", "values": ["rt"]},
        {"key": "rev", "operator": "In", "values": ["7"]}]
    # the typed client reads the same object
    p = c.get("pods", "rt", "affinity-rest")
    assert p.spec.topology_spread_constraints[0].node_taints_policy == "Honor"
    assert p.spec.affinity.pod_affinity.required_during_scheduling_ignored_during_execution[0].namespaces == ["other"]


def find_kubectl() -> str | None:
    for candidate in (os.environ.get("KUBECTL"), str(Path(sys.executable).parent / "kubectl"),
                      shutil.which("kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.mark.process
def test_kubectl_apply_and_get_keep_the_fields(c, plane, tmp_path):
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found: run harness/get_kubectl.sh or set KUBECTL")
    c.create(core_pb2.Namespace(metadata={"name": "affinity-kubectl"}))
    config = write_kubeconfig(str(tmp_path / "kubeconfig"), f"http://127.0.0.1:{plane.port}",
                              namespace="affinity-kubectl")
    manifest = json.loads(json.dumps(POD_JSON))
    manifest["metadata"]["name"] = "kc"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}

    def run(*args, stdin=None):
        return subprocess.run([kubectl, "--kubeconfig", config, "--cache-dir", str(tmp_path / "cache"), *args],
                              input=stdin, capture_output=True, text=True, timeout=60, env=env, check=True).stdout

    assert run("apply", "-f", "-", stdin=json.dumps(manifest)).strip() == "pod/kc created"
    got = json.loads(run("get", "pod", "kc", "-o", "json"))["spec"]
    assert got["topologySpreadConstraints"] == POD_JSON["spec"]["topologySpreadConstraints"]
    assert got["affinity"]["podAffinity"] == POD_JSON["spec"]["affinity"]["podAffinity"]
    assert run("get", "pod", "kc", "-o", "jsonpath={.spec.affinity.podAntiAffinity"
               ".preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm.topologyKey}") == HOSTNAME


@pytest.mark.process
def test_invalid_affinity_and_spread_get_upstream_field_errors(c, plane):
    c.create(core_pb2.Namespace(metadata={"name": "affinity-invalid"}))
    bad = json.loads(json.dumps(POD_JSON))
    bad["metadata"]["name"] = "bad"
    bad["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] = ""
    bad["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] = 101
    bad["spec"]["topologySpreadConstraints"] = [
        {"maxSkew": 0, "topologyKey": "", "whenUnsatisfiable": "Sometimes",
         "labelSelector": {"matchLabels": {"app": "rt"}}},
        {"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2},
        {"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "ScheduleAnyway"}]
    status, body = rest(plane, "POST", "/api/v1/namespaces/affinity-invalid/pods", bad)
    assert status == 422 and body["reason"] == "Invalid"
    causes = {(x["field"], x["message"]) for x in body["details"]["causes"]}
    aff = "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey"
    tsc = "spec.topologySpreadConstraints"
    for want in [
            (aff, "Required value: can not be empty"),
            ("spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
             "Invalid value: 101: must be in the range 1-100"),
            (f"{tsc}[0].maxSkew", "Invalid value: 0: must be greater than zero"),
            (f"{tsc}[0].topologyKey", "Required value: can not be empty"),
            (f"{tsc}[0].whenUnsatisfiable",
             'Unsupported value: "Sometimes": supported values: "DoNotSchedule", "ScheduleAnyway"'),
            (f"{tsc}[1].minDomains",
             "Invalid value: 2: can only use minDomains if whenUnsatisfiable=DoNotSchedule, not ScheduleAnyway"),
            (f"{tsc}[1].{{topologyKey, whenUnsatisfiable}}",
             f'Duplicate value: "{{{ZONE}, ScheduleAnyway}}"')]:
        assert want in causes, (want, causes)
    assert rest(plane, "GET", "/api/v1/namespaces/affinity-invalid/pods/bad")[0] == 404
