"""Kubernetes' rules for which volume a claim gets (controllers/pvbinding.py) and
the scheduler's VolumeBinding plugin over them (controllers/scheduler/volumebinding.py):
pure functions over typed messages, no processes."""

from __future__ import annotations

import pytest

from apiserver.pb import core_pb2, storage_pb2
from controllers import pvbinding as b
from controllers.persistentvolume import unsatisfied_reasons
from controllers.scheduler import volumebinding as vb


def pv(name, size="1Gi", modes=("ReadWriteOnce",), cls="", phase="Available", labels=None, node=None,
       claim=None, mode="Filesystem"):
    v = core_pb2.PersistentVolume()
    v.metadata.name = name
    v.metadata.labels.update(labels or {})
    v.spec.capacity["storage"] = size
    v.spec.access_modes.extend(modes)
    v.spec.storage_class_name = cls
    v.spec.volume_mode = mode
    v.spec.host_path.path = f"/srv/{name}"
    v.status.phase = phase
    if node is not None:
        term = v.spec.node_affinity.required.node_selector_terms.add()
        term.match_expressions.add(key="kubernetes.io/hostname", operator="In", values=[node])
    if claim is not None:
        v.spec.claim_ref.namespace, v.spec.claim_ref.name = "default", claim
    return v


def pvc(name="data", size="1Gi", modes=("ReadWriteOnce",), cls: str | None = "", selector=None, uid="u1",
        mode="Filesystem"):
    c = core_pb2.PersistentVolumeClaim()
    c.metadata.name, c.metadata.namespace, c.metadata.uid = name, "default", uid
    c.spec.access_modes.extend(modes)
    c.spec.resources.requests["storage"] = size
    if cls is not None:
        c.spec.storage_class_name = cls
    if selector:
        c.spec.selector.match_labels.update(selector)
    c.spec.volume_mode = mode
    return c


def node(name, **labels):
    n = core_pb2.Node()
    n.metadata.name = name
    n.metadata.labels.update({"kubernetes.io/hostname": name, **labels})
    return n


def sc(name, mode="WaitForFirstConsumer", provisioner="example.com/dirs", default=False):
    c = storage_pb2.StorageClass(provisioner=provisioner, volume_binding_mode=mode)
    c.metadata.name = name
    if default:
        c.metadata.annotations[b.DEFAULT_CLASS_ANNOTATION] = "true"
    return c


def best(claim, volumes, **kw):
    v = b.find_best_match(claim, volumes, **kw)
    return v.metadata.name if v is not None else None


# ---- the PV controller's matching ----

def test_the_smallest_volume_that_is_big_enough_wins():
    vols = [pv("big", "10Gi"), pv("small", "500Mi"), pv("fit", "2Gi"), pv("exact", "1Gi")]
    assert best(pvc(size="1Gi"), vols) == "exact"
    assert best(pvc(size="1500Mi"), vols) == "fit"
    assert best(pvc(size="20Gi"), vols) is None


def test_class_access_modes_volume_mode_and_selector_must_all_match():
    assert best(pvc(cls="fast"), [pv("slow", cls="slow"), pv("none")]) is None
    assert best(pvc(cls="fast"), [pv("slow", cls="slow"), pv("f", cls="fast")]) == "f"
    assert best(pvc(modes=("ReadWriteMany",)), [pv("rwo")]) is None
    assert best(pvc(mode="Block"), [pv("fs")]) is None
    vols = [pv("a", labels={"tier": "gold"}), pv("b", "512Mi", labels={"tier": "silver"})]
    assert best(pvc(size="100Mi", selector={"tier": "gold"}), vols) == "a"


def test_volumes_with_fewer_access_modes_are_preferred_over_smaller_ones():
    vols = [pv("many-modes", "1Gi", modes=("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany")),
            pv("one-mode", "5Gi", modes=("ReadWriteOnce",))]
    assert best(pvc(size="1Gi"), vols) == "one-mode"


def test_bound_released_or_deleting_volumes_are_not_candidates():
    deleting = pv("deleting")
    deleting.metadata.deletion_timestamp = "2026-12-07T00:00:00Z"
    vols = [pv("taken", claim="other"), pv("released", phase="Released"), deleting]
    assert best(pvc(), vols) is None


def test_a_volume_pre_bound_to_the_claim_wins_over_a_better_one():
    vols = [pv("exact", "1Gi"), pv("reserved", "8Gi", claim="data")]
    assert best(pvc(), vols) == "reserved"
    other_uid = pv("reserved-for-old", "1Gi", claim="data")
    other_uid.spec.claim_ref.uid = "old-claim"
    assert best(pvc(), [other_uid]) is None


def test_delayed_claims_match_only_for_a_node_and_only_volumes_reachable_from_it():
    vols = [pv("on-a", node="a"), pv("on-b", "2Gi", node="b")]
    claim = pvc()
    assert best(claim, vols, delay_binding=True) is None, "the scheduler chooses, not the PV controller"
    assert best(claim, vols, node=node("b"), delay_binding=True) == "on-b"
    assert best(claim, vols, node=node("c"), delay_binding=True) is None


def test_default_class_is_the_newest_annotated_one():
    old, new = sc("old", default=True), sc("new", default=True)
    old.metadata.creation_timestamp, new.metadata.creation_timestamp = "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"
    assert b.default_class([sc("plain"), old, new]).metadata.name == "new"
    assert b.default_class([sc("plain")]) is None


def test_why_a_named_volume_cannot_serve_a_claim():
    assert unsatisfied_reasons(pv("v", "1Gi"), pvc(size="2Gi")) == ["requested PV is too small"]
    assert unsatisfied_reasons(pv("v", cls="x"), pvc(cls="y")) == ["storageClassName does not match"]
    assert unsatisfied_reasons(pv("v"), pvc(modes=("ReadWriteMany",))) == ["incompatible accessMode"]
    assert unsatisfied_reasons(pv("v"), pvc()) == []


# ---- the scheduler's VolumeBinding plugin ----

def pod(*claims):
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = "p", "default"
    for name in claims:
        p.spec.volumes.add(name=name, persistent_volume_claim=core_pb2.PersistentVolumeClaimVolumeSource(
            claim_name=name))
    return p


def bound(claim, volume_name):
    claim.spec.volume_name = volume_name
    claim.metadata.annotations[b.ANN_BIND_COMPLETED] = "yes"
    return claim


def prefilter(pod_, claims, classes):
    by_key = {f"default/{c.metadata.name}": c for c in claims}
    return vb.pod_volumes(pod_, by_key.get, {c.metadata.name: c for c in classes})


def test_prefilter_refuses_missing_deleting_and_unbound_immediate_claims():
    assert prefilter(pod("gone"), [], []) == 'persistentvolumeclaim "gone" not found'
    deleting = pvc("data")
    deleting.metadata.deletion_timestamp = "2026-12-07T00:00:00Z"
    assert prefilter(pod("data"), [deleting], []) == 'persistentvolumeclaim "data" is being deleted'
    assert prefilter(pod("data"), [pvc("data", cls="now")], [sc("now", mode="Immediate")]) == \
        "pod has unbound immediate PersistentVolumeClaims"
    assert prefilter(pod("data"), [pvc("data", cls="")], []) == "pod has unbound immediate PersistentVolumeClaims"
    result = prefilter(pod("a", "b"), [bound(pvc("a"), "pv-a"), pvc("b", cls="later")], [sc("later")])
    assert [c.metadata.name for c, _ in result.bound] == ["a"]
    assert [c.metadata.name for c in result.delayed] == ["b"]


def decide(pod_volumes, n, volumes, classes, taken=frozenset()):
    by_name = {v.metadata.name: v for v in volumes}
    return vb.decide(pod_volumes, n, by_name.get, volumes, {c.metadata.name: c for c in classes}, taken)


def test_a_bound_claims_volume_pins_the_pod_to_the_nodes_it_reaches():
    claims = [bound(pvc("data"), "pv-1")]
    volumes = prefilter(pod("data"), claims, [])
    vols = [pv("pv-1", node="a", claim="data")]
    assert decide(volumes, node("a"), vols, [])[0] is None
    assert decide(volumes, node("b"), vols, [])[0] == "node(s) had volume node affinity conflict"
    assert decide(volumes, node("a"), [], [])[0] == \
        "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"


def test_delayed_claims_take_a_static_volume_or_a_provisioner_or_refuse_the_node():
    classes = [sc("local-static", provisioner=b.NO_PROVISIONER), sc("dirs")]
    static = prefilter(pod("data"), [pvc("data", cls="local-static")], classes)
    vols = [pv("disk-a", cls="local-static", node="a")]
    reason, decision = decide(static, node("a"), vols, classes)
    assert reason is None and [v.metadata.name for _, v in decision.static] == ["disk-a"]
    assert decide(static, node("b"), vols, classes)[0] == "node(s) didn't find available persistent volumes to bind"
    assert decide(static, node("a"), vols, classes, taken=frozenset({"disk-a"}))[0] is not None, \
        "a volume assumed for another pod's claim is not offered twice"
    dynamic = prefilter(pod("data"), [pvc("data", cls="dirs")], classes)
    reason, decision = decide(dynamic, node("b"), [], classes)
    assert reason is None and [c.metadata.name for c in decision.provision] == ["data"]


def test_a_claim_with_a_selected_node_fits_only_that_node():
    classes = [sc("dirs")]
    claim = pvc("data", cls="dirs")
    claim.metadata.annotations[b.ANN_SELECTED_NODE] = "a"
    volumes = prefilter(pod("data"), [claim], classes)
    assert decide(volumes, node("a"), [], classes)[0] is None
    assert decide(volumes, node("b"), [], classes)[0] == "node(s) didn't find available persistent volumes to bind"


def test_allowed_topologies_limit_where_a_class_provisions():
    cls = sc("zoned")
    term = cls.allowed_topologies.add()
    term.match_label_expressions.add(key="topology.kubernetes.io/zone", values=["z1"])
    volumes = prefilter(pod("data"), [pvc("data", cls="zoned")], [cls])
    assert decide(volumes, node("a", **{"topology.kubernetes.io/zone": "z1"}), [], [cls])[0] is None
    assert decide(volumes, node("b", **{"topology.kubernetes.io/zone": "z2"}), [], [cls])[0] is not None


@pytest.mark.parametrize("nodes, reasons, want", [
    (3, [["node(s) didn't find available persistent volumes to bind"]] * 3,
     "0/3 nodes are available: 3 node(s) didn't find available persistent volumes to bind."),
])
def test_the_fit_error_counts_volume_reasons_like_kubernetes(nodes, reasons, want):
    from controllers.scheduler.plugins import failed_scheduling_message
    assert failed_scheduling_message(nodes, reasons) == want


class _RacingClient:
    """Answers the first update with a Conflict (another writer got there first), as the
    apiserver does when the PV controller wrote the claim's status meanwhile."""

    def __init__(self, stored):
        self.stored, self.updates, self.conflicts = stored, [], 1

    def update(self, obj):
        from apiserver.errors import ApiError
        if self.conflicts:
            self.conflicts -= 1
            raise ApiError("Conflict", "the object has been modified")
        self.updates.append(obj)
        return obj

    def get(self, kind, name, namespace):
        return self.stored


def test_prebind_rereads_on_a_conflict_and_refuses_a_volume_another_claim_took():
    from apiserver.errors import ApiError
    from controllers.informer import SharedInformerFactory

    claim = pvc("data", cls="dirs")
    fresh = pvc("data", cls="dirs")
    fresh.metadata.resource_version = "7"
    client = _RacingClient(fresh)
    binder = vb.VolumeBinder(client, SharedInformerFactory(client))
    binder._write_fresh("persistentvolumeclaims", claim, lambda c: vb._select_node(c, "a"))
    [written] = client.updates
    assert written.metadata.resource_version == "7" and written.metadata.annotations[b.ANN_SELECTED_NODE] == "a"
    taken = pv("disk", claim="someone-else")
    client = _RacingClient(taken)
    binder = vb.VolumeBinder(client, SharedInformerFactory(client))
    with pytest.raises(ApiError) as e:
        binder._write_fresh("persistentvolumes", pv("disk"), lambda v: vb._prebind(v, claim))
    assert e.value.reason == "Conflict" and not client.updates
