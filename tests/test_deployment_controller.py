"""The Deployment controller (with the ReplicaSet controller under it)
against a real etcdlite and apiserver, both run in-process. ``PodReadier``
plays the kubelets; ``PodLedger`` checks rollouts from the apiserver's pod
watch stream: a rolling update never has more than replicas + maxSurge pods
nor fewer than replicas - maxUnavailable ready ones, and Recreate never runs
old and new pods together."""

from __future__ import annotations

import pytest
from harness.etcd_client import wait_until
from harness.plane import start_apiserver
from harness.procs import Registry
from test_replicaset_controller import (
    TIMEOUT,
    PodLedger,
    PodReadier,
    new_namespace,
    owned_by,
    wait_for,
)

from apiserver.client import Client
from apiserver.pb import apps_pb2
from controllers.deployment import DeploymentController
from controllers.deploymentutil import (
    DESIRED_REPLICAS_ANNOTATION,
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
)
from controllers.informer import SharedInformerFactory
from controllers.podutil import (
    POD_TEMPLATE_HASH_LABEL,
    compute_hash,
    get_condition,
    without_hash,
)
from controllers.replicaset import ReplicaSetController

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    reg = Registry()
    tmp = tmp_path_factory.mktemp("deployctl")
    member = reg.start_etcdlite(tmp, name="etcd")
    api = start_apiserver(tmp, member.url, registry=reg)
    try:
        with Client(api.endpoint, timeout=15) as c:
            factory = SharedInformerFactory(c)
            rsc = ReplicaSetController(c, factory, workers=2)
            dc = DeploymentController(c, factory, workers=2)
            factory.start()
            rsc.start()
            dc.start()
            yield c
            dc.stop()
            rsc.stop()
            factory.stop()
    finally:
        reg.cleanup()


def deployment(name: str, replicas: int, namespace: str, *, image: str = "nginx:1", strategy: str = "",
               surge: str = "", unavailable: str = "", history: int | None = None,
               deadline: int | None = None) -> apps_pb2.Deployment:
    d = apps_pb2.Deployment()
    d.metadata.name = name
    d.metadata.namespace = namespace
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = name
    d.spec.template.metadata.labels["app"] = name
    d.spec.template.spec.containers.add(name="main", image=image)
    d.spec.strategy.type = strategy
    if surge:
        d.spec.strategy.rolling_update.max_surge = surge
    if unavailable:
        d.spec.strategy.rolling_update.max_unavailable = unavailable
    if history is not None:
        d.spec.revision_history_limit = history
    if deadline is not None:
        d.spec.progress_deadline_seconds = deadline
    return d


def replica_sets(client: Client, d) -> list:
    return sorted((rs for rs in client.list("replicasets", d.metadata.namespace).items if owned_by(rs, d)),
                  key=lambda rs: int(rs.metadata.annotations.get(REVISION_ANNOTATION, "0")))


def image_of(obj) -> str:
    return obj.spec.template.spec.containers[0].image if hasattr(obj.spec, "template") else \
        obj.spec.containers[0].image


def complete(client: Client, namespace: str, name: str):
    """The Deployment once its rollout is done: every replica updated and
    available, no old pods, the Progressing reason NewReplicaSetAvailable."""
    d = client.get("deployments", name, namespace)
    s, n = d.status, d.spec.replicas
    if s.observed_generation < d.metadata.generation:
        return None
    if (s.replicas, s.updated_replicas, s.available_replicas, s.ready_replicas) != (n, n, n, n):
        return None
    prog = get_condition(s.conditions, "Progressing")
    if prog is None or prog.reason != "NewReplicaSetAvailable":
        return None
    pods = [p for p in client.list("pods", namespace, label_selector=f"app={name}").items]
    if len(pods) != n or any(image_of(p) != image_of(d) for p in pods):
        return None
    return d


def wait_complete(client: Client, namespace: str, name: str):
    return wait_until(lambda: complete(client, namespace, name), TIMEOUT, what=f"deployment {name} complete")


def set_image(client: Client, namespace: str, name: str, image: str) -> None:
    client.patch("deployments", name, {"spec": {"template": {"spec": {"containers": [
        {"name": "main", "image": image}]}}}}, namespace)


def test_a_deployment_of_ten_becomes_available(client):
    ns = new_namespace(client, "available")
    with PodReadier(client, ns):
        created = client.create(deployment("web", 10, ns))
        d = wait_complete(client, ns, "web")
    s = d.status
    assert (s.replicas, s.updated_replicas, s.ready_replicas, s.available_replicas, s.unavailable_replicas) == \
        (10, 10, 10, 10, 0)
    avail = get_condition(s.conditions, "Available")
    assert (avail.status, avail.reason) == ("True", "MinimumReplicasAvailable")
    prog = get_condition(s.conditions, "Progressing")
    assert (prog.status, prog.reason) == ("True", "NewReplicaSetAvailable")
    (rs,) = replica_sets(client, d)
    pod_hash = compute_hash(created.spec.template)
    assert rs.metadata.name == f"web-{pod_hash}"
    assert rs.spec.selector.match_labels == {"app": "web", POD_TEMPLATE_HASH_LABEL: pod_hash}
    assert rs.metadata.labels[POD_TEMPLATE_HASH_LABEL] == pod_hash
    assert rs.metadata.annotations[REVISION_ANNOTATION] == "1"
    assert rs.metadata.annotations[DESIRED_REPLICAS_ANNOTATION] == "10"
    assert d.metadata.annotations[REVISION_ANNOTATION] == "1"
    pods = client.list("pods", ns).items
    assert len(pods) == 10 and all(p.metadata.labels[POD_TEMPLATE_HASH_LABEL] == pod_hash for p in pods)
    assert all(owned_by(p, rs) for p in pods)


def test_rolling_update_stays_within_surge_and_unavailability(client):
    ns = new_namespace(client, "rolling")
    # defaults: maxSurge 25% of 10 rounds up to 3, maxUnavailable 25% rounds down to 2
    with PodReadier(client, ns, delay=0.3, interval=0.1):
        client.create(deployment("web", 10, ns))
        wait_complete(client, ns, "web")
        ledger = PodLedger(client, ns, "app=web")
        try:
            ledger.arm()
            set_image(client, ns, "web", "nginx:2")
            d = wait_complete(client, ns, "web")
        finally:
            ledger.close()
    assert ledger.max_live <= 13, f"{ledger.max_live} pods at once"
    assert ledger.min_ready >= 8, f"only {ledger.min_ready} ready at one point"
    assert ledger.max_live > 10  # it did surge
    assert len(ledger.added) == 10  # each new pod created once
    old, new = replica_sets(client, d)
    assert old.spec.replicas == 0 and new.spec.replicas == 10
    assert (image_of(old), image_of(new)) == ("nginx:1", "nginx:2")
    assert new.metadata.annotations[REVISION_ANNOTATION] == "2"
    assert d.metadata.annotations[REVISION_ANNOTATION] == "2"


def test_rollback_reuses_the_old_replica_set(client):
    ns = new_namespace(client, "rollback")
    with PodReadier(client, ns):
        client.create(deployment("web", 3, ns))
        wait_complete(client, ns, "web")
        set_image(client, ns, "web", "nginx:2")
        d = wait_complete(client, ns, "web")
        first, second = replica_sets(client, d)
        # what `kctl rollout undo` does: the old ReplicaSet's template, less the hash label
        d.spec.template.CopyFrom(without_hash(first.spec.template))
        client.update(d)
        d = wait_complete(client, ns, "web")
    assert image_of(d) == "nginx:1"
    rss = {rs.metadata.name: rs for rs in replica_sets(client, d)}
    assert set(rss) == {first.metadata.name, second.metadata.name}  # no third ReplicaSet
    back = rss[first.metadata.name]
    assert back.spec.replicas == 3 and rss[second.metadata.name].spec.replicas == 0
    assert back.metadata.annotations[REVISION_ANNOTATION] == "3"
    assert back.metadata.annotations[REVISION_HISTORY_ANNOTATION] == "1"
    assert d.metadata.annotations[REVISION_ANNOTATION] == "3"
    assert all(p.metadata.labels[POD_TEMPLATE_HASH_LABEL] == back.metadata.labels[POD_TEMPLATE_HASH_LABEL]
               for p in client.list("pods", ns).items)


def test_scale_to_zero_and_back(client):
    ns = new_namespace(client, "zero")
    with PodReadier(client, ns):
        client.create(deployment("web", 4, ns))
        wait_complete(client, ns, "web")
        client.patch("deployments", "web", {"spec": {"replicas": 0}}, ns)
        d = wait_for(lambda: client.get("deployments", "web", ns),
                     lambda d: d.status.replicas == 0 and d.status.observed_generation == d.metadata.generation,
                     "scaled to 0")
        wait_until(lambda: not client.list("pods", ns).items, TIMEOUT, what="no pods")
        (rs,) = replica_sets(client, d)
        assert rs.spec.replicas == 0 and rs.metadata.annotations[DESIRED_REPLICAS_ANNOTATION] == "0"
        client.patch("deployments", "web", {"spec": {"replicas": 4}}, ns)
        d = wait_complete(client, ns, "web")
    (again,) = replica_sets(client, d)
    assert again.metadata.uid == rs.metadata.uid and again.spec.replicas == 4
    assert get_condition(d.status.conditions, "Available").status == "True"


def test_recreate_never_runs_old_and_new_pods_together(client):
    ns = new_namespace(client, "recreate")
    with PodReadier(client, ns, delay=0.2):
        client.create(deployment("web", 4, ns, strategy="Recreate"))
        wait_complete(client, ns, "web")
        ledger = PodLedger(client, ns, "app=web")
        ledger.overlap = lambda live: len({p.metadata.labels[POD_TEMPLATE_HASH_LABEL] for p in live}) > 1
        try:
            ledger.arm()
            set_image(client, ns, "web", "nginx:2")
            d = wait_complete(client, ns, "web")
        finally:
            ledger.close()
    assert not ledger.overlapped
    assert ledger.min_ready == 0  # everything old went before anything new came
    assert len(ledger.added) == 4
    old, new = replica_sets(client, d)
    assert (old.spec.replicas, new.spec.replicas) == (0, 4)


def test_revision_history_limit_prunes_old_replica_sets(client):
    ns = new_namespace(client, "history")
    with PodReadier(client, ns):
        client.create(deployment("web", 2, ns, history=1))
        wait_complete(client, ns, "web")
        for image in ("nginx:2", "nginx:3", "nginx:4"):
            set_image(client, ns, "web", image)
            d = wait_complete(client, ns, "web")
    rss = wait_for(lambda: replica_sets(client, d), lambda rss: len(rss) == 2, "one old ReplicaSet kept")
    assert [image_of(rs) for rs in rss] == ["nginx:3", "nginx:4"]
    assert [rs.metadata.annotations[REVISION_ANNOTATION] for rs in rss] == ["3", "4"]


def test_paused_deployment_scales_but_does_not_roll_out(client):
    ns = new_namespace(client, "paused")
    with PodReadier(client, ns):
        client.create(deployment("web", 3, ns))
        wait_complete(client, ns, "web")
        client.patch("deployments", "web", {"spec": {"paused": True}}, ns)
        set_image(client, ns, "web", "nginx:2")
        client.patch("deployments", "web", {"spec": {"replicas": 5}}, ns)

        def paused_and_scaled():
            d = client.get("deployments", "web", ns)
            prog = get_condition(d.status.conditions, "Progressing")
            if d.status.observed_generation < d.metadata.generation or prog is None or \
                    prog.reason != "DeploymentPaused" or d.status.available_replicas != 5:
                return None
            return d
        d = wait_until(paused_and_scaled, TIMEOUT, what="paused, scaled to 5")
        (rs,) = replica_sets(client, d)  # no new ReplicaSet while paused
        assert image_of(rs) == "nginx:1" and rs.spec.replicas == 5
        client.patch("deployments", "web", {"spec": {"paused": False}}, ns)
        d = wait_complete(client, ns, "web")
    assert image_of(d) == "nginx:2" and d.status.replicas == 5
    assert [rs.spec.replicas for rs in replica_sets(client, d)] == [0, 5]


def test_progress_deadline_exceeded_when_new_pods_never_become_ready(client):
    ns = new_namespace(client, "deadline")
    with PodReadier(client, ns, wanted=lambda p: p.spec.containers[0].image != "broken:1"):
        client.create(deployment("web", 2, ns, deadline=2))
        wait_complete(client, ns, "web")
        set_image(client, ns, "web", "broken:1")

        def timed_out():
            d = client.get("deployments", "web", ns)
            prog = get_condition(d.status.conditions, "Progressing")
            return d if prog is not None and prog.reason == "ProgressDeadlineExceeded" else None
        d = wait_until(timed_out, TIMEOUT, what="ProgressDeadlineExceeded")
    prog = get_condition(d.status.conditions, "Progressing")
    assert prog.status == "False" and "has timed out progressing" in prog.message
    # maxUnavailable 25% of 2 is 0: the old pods all stay, so it is still available
    avail = get_condition(d.status.conditions, "Available")
    assert (avail.status, avail.reason) == ("True", "MinimumReplicasAvailable")
    old, new = replica_sets(client, d)
    assert (old.spec.replicas, new.spec.replicas) == (2, 1)


def test_adopts_an_orphan_replica_set_and_rolls_past_it(client):
    ns = new_namespace(client, "adoptrs")
    legacy = apps_pb2.ReplicaSet()
    legacy.metadata.name = "legacy"
    legacy.metadata.namespace = ns
    legacy.metadata.labels["app"] = "web"
    legacy.spec.replicas = 2
    legacy.spec.selector.match_labels["app"] = "web"
    legacy.spec.template.metadata.labels["app"] = "web"
    legacy.spec.template.spec.containers.add(name="main", image="nginx:0")
    with PodReadier(client, ns):
        legacy = client.create(legacy)
        wait_until(lambda: client.get("replicasets", "legacy", ns).status.ready_replicas == 2, TIMEOUT,
                   what="legacy ready")
        d = client.create(deployment("web", 2, ns))
        d = wait_complete(client, ns, "web")
    adopted = client.get("replicasets", "legacy", ns)
    assert owned_by(adopted, d) and adopted.spec.replicas == 0
    assert replica_sets(client, d)[0].metadata.name == "legacy"
