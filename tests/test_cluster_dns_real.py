"""Cluster DNS on a real node: `python -m node.dns` answering inside node 0's namespace at the
node's address, the kubelet (given --cluster-dns by node.plane) writing ClusterFirst pods'
resolv.conf, and a busybox pod resolving Service names with nslookup and wget through its own
resolver (the search list included)."""

from __future__ import annotations

import os

import pytest

from apiserver.client import Client
from apiserver.pb import core_pb2
from harness.etcd_client import wait_until
from harness.nodes import dns_answers, need_runtime, real_nodes
from harness.plane import start_component, start_control_plane
from harness.procs import REPO, Registry
from node.cri.client import CriClient

pytestmark = pytest.mark.process

TIMEOUT = 120
WEB_IP = "10.96.0.50"
KUBE_DNS_IP = "10.96.0.10"


def pod(name: str, labels: dict, command: list[str], **spec) -> core_pb2.Pod:
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = name, "default"
    p.metadata.labels.update(labels)
    for k, v in spec.items():
        setattr(p.spec, k, v)
    c = p.spec.containers.add(name="main", image="busybox", command=command)
    c.ports.add(container_port=80)
    return p


def service(name: str, cluster_ip: str) -> core_pb2.Service:
    svc = core_pb2.Service()
    svc.metadata.name, svc.metadata.namespace = name, "default"
    svc.spec.cluster_ip = cluster_ip
    svc.spec.selector["app"] = "dnsweb"
    svc.spec.ports.add(name="http", protocol="TCP", port=80, target_port="80")
    return svc


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    reg = Registry()
    tmp = tmp_path_factory.mktemp("dnsreal")
    try:
        api = start_control_plane(tmp, reg)
        with real_nodes(tmp, api.endpoint, 1) as nodes, Client(api.endpoint, timeout=20) as client:
            layout = nodes.layout
            node0 = layout.nodes[0]
            start_component(tmp, "dns", "node.dns", api.endpoint, reg,
                            ready=lambda: dns_answers(node0.netns, layout.cluster_dns),
                            listen=f"{layout.cluster_dns}:53", netns=node0.netns, log_level="warning")
            yield client, nodes, reg, tmp, api.endpoint
    finally:
        reg.cleanup()


def running(client, name: str):
    p = client.get("pods", name, "default")
    return p if p.status.pod_ip and any(c.type == "Ready" and c.status == "True"
                                        for c in p.status.conditions) else None


def client_container(runtime) -> str:
    [cid] = [c.id for c in runtime.list_containers()
             if c.labels.get("io.kubernetes.pod.name") == "client" and c.state == 1]
    return cid


def test_a_pod_resolves_services_through_the_cluster_dns(plane):
    client, nodes, *_ = plane
    dns_ip = nodes.layout.cluster_dns
    client.create(service("web", WEB_IP))
    client.create(service("webhl", "None"))
    client.create(pod("server", {"app": "dnsweb"}, ["sh", "-c", "mkdir -p /www && echo hello by name > "
                                                    "/www/index.html && exec httpd -f -p 80 -h /www"]))
    client.create(pod("client", {}, ["sleep", "3600"]))
    server = wait_until(lambda: running(client, "server"), TIMEOUT, what="the server pod Ready")
    wait_until(lambda: running(client, "client"), TIMEOUT, what="the client pod Ready")
    runtime = CriClient(nodes.layout.nodes[0].cri_socket, timeout=30)
    try:
        cid = client_container(runtime)

        def run(*cmd):
            got = runtime.exec_sync(cid, list(cmd), timeout=15)
            return got.exit_code, got.stdout.decode() + got.stderr.decode()

        code, conf = run("cat", "/etc/resolv.conf")
        assert (code, conf) == (0, f"nameserver {dns_ip}\nsearch default.svc.cluster.local "
                                   "svc.cluster.local cluster.local\noptions ndots:5\n")
        code, out = run("nslookup", "web.default.svc.cluster.local", dns_ip)
        assert code == 0 and WEB_IP in out, out
        # the headless Service's name gives the pod's address once the endpoints controller has it
        wait_until(lambda: server.status.pod_ip in run("nslookup", "webhl.default.svc.cluster.local")[1],
                   TIMEOUT, what="the headless Service resolved to the server pod")
        code, out = run("nslookup", "nothing.default.svc.cluster.local", dns_ip)
        assert code != 0 and "NXDOMAIN" in out, out
        # the pod's own resolver: a short name through the search list, then HTTP to the answer
        code, out = run("wget", "-qO-", "http://webhl/")
        assert (code, out.strip()) == (0, "hello by name"), out
    finally:
        runtime.close()


def test_the_kube_dns_service_reaches_the_server_through_kube_proxy(plane):
    """As in Kubernetes, pods may ask the kube-dns Service's clusterIP: kube-proxy (node/proxy, where
    it exists) routes it to the Endpoints the server registered (its own address)."""
    # (the file, not an import: another checkout's editable install could answer the import)
    if not os.path.exists(os.path.join(REPO, "node", "proxy", "__main__.py")):
        pytest.skip("no kube-proxy (node/proxy) on this branch: the clusterIP is routed by nothing")
    client, nodes, reg, tmp, server = plane
    layout = nodes.layout
    node0 = layout.nodes[0]
    wait_until(lambda: running(client, "client"), TIMEOUT, what="the client pod Ready")
    kdns = client.get("services", "kube-dns", "kube-system")
    assert kdns.spec.cluster_ip == KUBE_DNS_IP
    start_component(tmp, "proxy-0", "node.proxy", server, reg, node_name=node0.name, node_netns=node0.netns,
                    node_ip=node0.ip, cluster_cidr="10.244.0.0/16", log_level="warning")
    runtime = CriClient(node0.cri_socket, timeout=30)
    try:
        cid = client_container(runtime)

        def lookup():
            got = runtime.exec_sync(cid, ["nslookup", "web.default.svc.cluster.local", KUBE_DNS_IP], timeout=15)
            return got if got.exit_code == 0 else None

        got = wait_until(lookup, TIMEOUT, what="an answer through the kube-dns clusterIP")
        assert WEB_IP in got.stdout.decode()
    finally:
        runtime.close()
