"""The pods' resolver settings the kubelet sends in PodSandboxConfig.dns_config (node/kubelet/dns.py):
each dnsPolicy as upstream's dns configurer decides it, the node's resolv.conf parsed, the
resolver's limits kept; and the sandbox config carrying them to the runtime, which writes them as
the pod's resolv.conf."""

from __future__ import annotations

from kubelet_fixtures import make_pod

from node.kubelet import podconfig
from node.kubelet.dns import DnsConfigurer, parse_resolv_conf
from node.runtime.sandbox import resolv_conf


def host_file(tmp_path, text="nameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example lab.example\n"
              "options timeout:2 # a comment\n"):
    path = tmp_path / "resolv.conf"
    path.write_text(text)
    return str(path)


def pod_in(namespace="shop", policy="", host_network=False):
    pod = make_pod(namespace=namespace)
    pod.spec.dns_policy = policy
    pod.spec.host_network = host_network
    return pod


def test_cluster_first_points_at_the_cluster_dns_with_the_kubernetes_search_list(tmp_path):
    dns = DnsConfigurer(["10.96.0.10"], "cluster.local", host_file(tmp_path))
    for policy in ("", "ClusterFirst", "ClusterFirstWithHostNet"):
        cfg = dns.pod_dns(pod_in(policy=policy))
        assert list(cfg.servers) == ["10.96.0.10"], policy
        assert list(cfg.searches) == ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local",
                                      "corp.example", "lab.example"]
        assert list(cfg.options) == ["ndots:5"]
    text = resolv_conf(dns.pod_dns(pod_in()))
    assert text == ("nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local "
                    "corp.example lab.example\noptions ndots:5\n")


def test_host_network_default_none_and_no_cluster_dns(tmp_path):
    path = host_file(tmp_path)
    dns = DnsConfigurer(["10.96.0.10"], "cluster.local", path)
    node = (["192.0.2.53", "192.0.2.54"], ["corp.example", "lab.example"], ["timeout:2"])
    for pod in (pod_in(policy="Default"), pod_in(policy="ClusterFirst", host_network=True), pod_in(host_network=True)):
        cfg = dns.pod_dns(pod)
        assert (list(cfg.servers), list(cfg.searches), list(cfg.options)) == node
    cfg = dns.pod_dns(pod_in(policy="ClusterFirstWithHostNet", host_network=True))
    assert list(cfg.servers) == ["10.96.0.10"]
    none = dns.pod_dns(pod_in(policy="None"))
    assert (list(none.servers), list(none.searches), list(none.options)) == ([], [], [])
    # no --cluster-dns: ClusterFirst pods get the node's settings, as the kubelet falls back
    bare = DnsConfigurer([], "cluster.local", path).pod_dns(pod_in())
    assert list(bare.servers) == node[0]
    assert list(DnsConfigurer([], "cluster.local", "").pod_dns(pod_in(policy="Default")).servers) == []


def test_limits_and_the_resolv_conf_parser(tmp_path):
    assert parse_resolv_conf("domain a.example\nsearch b.example. c.example\nnameserver 1.2.3.4 ; x\n"
                             "options ndots:2 rotate\n") == (["1.2.3.4"], ["b.example", "c.example"],
                                                             ["ndots:2", "rotate"])
    many = "".join(f"nameserver 192.0.2.{i}\n" for i in range(6)) + "search " + " ".join(
        f"d{i}-{'x' * 60}.example" for i in range(40)) + "\n"
    cfg = DnsConfigurer(["10.96.0.10", "10.96.0.11"], "cluster.local", host_file(tmp_path, many)).pod_dns(pod_in())
    assert list(cfg.servers) == ["10.96.0.10", "10.96.0.11"]
    assert len(cfg.searches) <= 32 and len(" ".join(cfg.searches)) <= 2048
    assert list(cfg.searches[:3]) == ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    default = DnsConfigurer([], "cluster.local", host_file(tmp_path, many)).pod_dns(pod_in(policy="Default"))
    assert len(default.servers) == 3


def test_sandbox_config_carries_the_dns_config(tmp_path):
    dns = DnsConfigurer(["10.250.0.1"], "cluster.local", "")
    pod = pod_in(namespace="default")
    cfg = podconfig.sandbox_config(pod, 0, str(tmp_path), dns_config=dns.pod_dns(pod))
    assert list(cfg.dns_config.servers) == ["10.250.0.1"]
    assert list(cfg.dns_config.searches) == ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    assert not podconfig.sandbox_config(pod, 0, str(tmp_path)).HasField("dns_config")
