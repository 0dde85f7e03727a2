"""Real kubelets in the whole plane: etcdlite, the apiserver, a controller-manager and the
scheduler as processes, three real nodes (node.plane's layout: fabric, node namespaces, our CRI
runtime and ``python -m node.kubelet`` each) from harness.nodes. The example Deployment
(controllers/kctl/examples/web.yaml: busybox httpd serving a page that names its pod) becomes
Ready pods spread over the nodes, and every pod's page is fetched by its IP from a pod on
another node. Needs root, runc, conmon, busybox-static."""

from __future__ import annotations

import pytest
import yaml

from apiserver.client import Client
from apiserver.manifest import from_dict
from harness.etcd_client import wait_until
from harness.nodes import real_nodes
from harness.plane import start_apiserver, start_component
from harness.procs import REPO, Registry
from node.cri.client import CriClient
from node.capable import why_not

pytestmark = pytest.mark.process

TIMEOUT = 90


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    reg = Registry()
    tmp = tmp_path_factory.mktemp("realplane")
    try:
        etcd = reg.start_etcdlite(tmp, name="etcd")
        api = start_apiserver(tmp, etcd.url, registry=reg)
        start_component(tmp, "cm", "controllers.manager", api.endpoint, reg, log_level="warning")
        start_component(tmp, "scheduler", "controllers.scheduler", api.endpoint, reg, log_level="warning")
        with Client(api.endpoint, timeout=20) as client, real_nodes(tmp / "nodes", api.endpoint, count=3) as nodes:
            wait_until(lambda: len(ready_nodes(client)) == 3, TIMEOUT, what="3 Ready real nodes")
            yield client, nodes
    finally:
        reg.cleanup()


def ready_nodes(client) -> list[str]:
    return [n.metadata.name for n in client.list("nodes").items
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)]


def ready_pods(client, label: str) -> list:
    return [p for p in client.list("pods", "default", label_selector=label).items
            if not p.metadata.deletion_timestamp
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)]


def test_web_deployment_serves_its_pages_across_nodes(plane):
    client, nodes = plane
    with open(REPO / "controllers" / "kctl" / "examples" / "web.yaml") as f:
        docs = [d for d in yaml.safe_load_all(f) if d and d["kind"] == "Deployment"]
    client.create(from_dict(docs[0]))
    pods = wait_until(lambda: (lambda ps: ps if len(ps) == 6 else None)(ready_pods(client, "app=web")),
                      TIMEOUT, what="6 Ready web pods")
    by_node: dict[str, list] = {}
    for p in pods:
        by_node.setdefault(p.spec.node_name, []).append(p)
    assert len(by_node) >= 2, {n: len(ps) for n, ps in by_node.items()}
    runtimes = {n.name: rt for n, rt in zip(nodes.layout.nodes, nodes.runtimes)}
    for target in pods:
        # a pod on another node fetches the target's page by pod IP (across the fabric)
        source = next(p for node, ps in by_node.items() if node != target.spec.node_name for p in ps)
        cid = source.status.container_statuses[0].container_id.split("://", 1)[1]
        with CriClient(runtimes[source.spec.node_name].endpoint, timeout=20) as cri:
            resp = cri.exec_sync(cid, ["wget", "-qO-", f"http://{target.status.pod_ip}:80/"], 10)
        assert resp.exit_code == 0, resp.stderr
        assert resp.stdout.decode().strip() == f"hello from {target.metadata.name}"
