"""kube-proxy's pure parts: Services and Endpoints read into service ports, the rules each traffic
policy gives, the transaction written between two states, and the bounded-frequency runner. The
rules run in the kernel in tests/test_kube_proxy.py; here their shape is pinned without root."""

from __future__ import annotations

import threading
import time

import pytest

from apiserver.pb import core_pb2
from node.proxy import transaction
from node.proxy.__main__ import build_parser, duration
from node.proxy.model import (DEFAULT_AFFINITY_TIMEOUT, EndpointInfo, ServicePortInfo,
                              endpoints_by_port, service_ports)
from node.proxy.rules import (CLUSTER_IPS, NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES,
                              SERVICE_IPS, SERVICE_NODEPORTS, NodeConfig, Rules, base_rules,
                              service_port_rules)
from node.proxy.runner import BoundedFrequencyRunner

CFG = NodeConfig("n0", "10.250.0.1", "10.244.0.0/16")
LOCAL = EndpointInfo("10.244.0.5", 8080, "n0")
REMOTE = EndpointInfo("10.244.1.5", 8080, "n1")
UNREADY = EndpointInfo("10.244.1.6", 8080, "n1", ready=False)


def _sp(**kw) -> ServicePortInfo:
    args = dict(namespace="default", name="web", port_name="http", protocol="TCP",
                cluster_ip="10.96.0.10", port=80)
    args.update(kw)
    return ServicePortInfo(**args)


def _dnats(r: Rules) -> set[str]:
    return {rule.split("dnat to ")[1] for rules in r.chains.values() for rule in rules
            if "dnat to" in rule}


def test_service_ports_read_from_a_service():
    svc = core_pb2.Service()
    svc.metadata.name, svc.metadata.namespace = "web", "shop"
    svc.spec.cluster_ip, svc.spec.type = "10.96.0.10", "NodePort"
    svc.spec.ports.add(name="http", port=80, target_port="8080", protocol="TCP", node_port=30080)
    svc.spec.ports.add(name="dns", port=53, protocol="UDP", node_port=30053)
    svc.spec.session_affinity = "ClientIP"
    svc.spec.external_traffic_policy = "Local"
    ports = service_ports(svc)
    assert [(p.port_name, p.protocol, p.port, p.node_port) for p in ports] == \
        [("http", "TCP", 80, 30080), ("dns", "UDP", 53, 30053)]
    assert all(p.affinity_timeout == DEFAULT_AFFINITY_TIMEOUT and p.external_local
               and not p.internal_local for p in ports)
    svc.spec.session_affinity_config.client_ip.timeout_seconds = 30
    assert service_ports(svc)[0].affinity_timeout == 30
    svc.spec.type = "ClusterIP"  # a leftover nodePort means nothing there
    assert service_ports(svc)[0].node_port == 0 and not service_ports(svc)[0].external_local
    for cip in ("None", ""):  # headless, or not allocated yet
        svc.spec.cluster_ip = cip
        assert service_ports(svc) == []


def test_endpoints_by_port_keeps_readiness_node_and_protocol():
    ep = core_pb2.Endpoints()
    s = ep.subsets.add()
    s.addresses.add(ip="10.244.0.5", node_name="n0")
    s.not_ready_addresses.add(ip="10.244.1.6")
    s.ports.add(name="http", port=8080, protocol="TCP")
    s.ports.add(name="dns", port=5353, protocol="UDP")
    got = endpoints_by_port(ep)
    assert got[("http", "TCP")] == [EndpointInfo("10.244.0.5", 8080, "n0", True),
                                    EndpointInfo("10.244.1.6", 8080, "", False)]
    assert got[("dns", "UDP")][0].port == 5353
    assert endpoints_by_port(None) == {}


def test_cluster_policy_spreads_over_ready_endpoints_and_masquerades_outside_traffic():
    r = service_port_rules(CFG, _sp(), [LOCAL, REMOTE, UNREADY])
    assert _dnats(r) == {"10.244.0.5:8080", "10.244.1.5:8080"}  # not the unready one
    (chain,) = [c for c in r.chains if c.startswith("service-")]
    assert r.elements[(SERVICE_IPS, "10.96.0.10 . tcp . 80")] == f"goto {chain}"
    assert r.elements[(CLUSTER_IPS, "10.96.0.10")] == ""
    body = r.chains[chain]
    assert "ip saddr != 10.244.0.0/16 jump mark-for-masquerade" in body[0]
    assert body[-1].startswith("numgen random mod 2 vmap")
    for c, rules in r.chains.items():
        if c.startswith("endpoint-"):
            ip = rules[-1].split("dnat to ")[1].split(":")[0]
            assert rules[0] == f"ip saddr {ip} jump mark-for-masquerade"  # hairpin


def test_no_ready_endpoints_rejects_clusterip_and_node_port():
    r = service_port_rules(CFG, _sp(node_port=30080), [UNREADY])
    assert r.chains == {}
    assert r.elements[(NO_ENDPOINT_SERVICES, "10.96.0.10 . tcp . 80")] == "goto reject-chain"
    assert r.elements[(NO_ENDPOINT_NODEPORTS, "tcp . 30080")] == "goto reject-chain"


def test_internal_local_uses_this_nodes_endpoints_or_drops():
    r = service_port_rules(CFG, _sp(internal_local=True), [LOCAL, REMOTE])
    assert _dnats(r) == {"10.244.0.5:8080"}
    assert r.elements[(SERVICE_IPS, "10.96.0.10 . tcp . 80")].startswith("goto local-")
    r = service_port_rules(CFG, _sp(internal_local=True), [REMOTE])
    assert r.elements[(NO_ENDPOINT_SERVICES, "10.96.0.10 . tcp . 80")] == "drop"
    assert (SERVICE_IPS, "10.96.0.10 . tcp . 80") not in r.elements


def test_external_local_keeps_client_ip_short_circuits_pods_and_drops_without_local():
    r = service_port_rules(CFG, _sp(node_port=30080, external_local=True), [LOCAL, REMOTE])
    (ext,) = [c for c in r.chains if c.startswith("external-")]
    assert r.elements[(SERVICE_NODEPORTS, "tcp . 30080")] == f"goto {ext}"
    body = r.chains[ext]
    assert body[0].startswith("ip saddr 10.244.0.0/16 goto service-")
    assert body[-1].startswith("goto local-")
    assert not any(rule == "jump mark-for-masquerade" for rule in body)  # client IP kept
    r = service_port_rules(CFG, _sp(node_port=30080, external_local=True), [REMOTE])
    assert r.elements[(NO_ENDPOINT_NODEPORTS, "tcp . 30080")] == "drop"
    # Cluster external policy: always masqueraded
    r = service_port_rules(CFG, _sp(node_port=30080), [REMOTE])
    (ext,) = [c for c in r.chains if c.startswith("external-")]
    assert r.chains[ext][0] == "jump mark-for-masquerade"


def test_external_ips_lead_to_the_external_chain_reject_without_endpoints_and_drop_without_local():
    svc = core_pb2.Service()
    svc.metadata.name, svc.metadata.namespace = "web", "default"
    svc.spec.cluster_ip = "10.96.0.10"
    svc.spec.external_ips.extend(["192.0.2.10", "2001:db8::1", "192.0.2.10"])  # IPv4 only, once
    svc.spec.external_traffic_policy = "Local"
    svc.spec.ports.add(name="http", port=80, protocol="TCP")
    [sp] = service_ports(svc)
    assert sp.external_ips == ("192.0.2.10",) and sp.node_port == 0 and sp.external_local
    assert sp.externally_accessible

    key = "192.0.2.10 . tcp . 80"
    r = service_port_rules(CFG, _sp(external_ips=("192.0.2.10",)), [LOCAL, REMOTE])
    (ext,) = [c for c in r.chains if c.startswith("external-")]
    assert r.elements[(SERVICE_IPS, key)] == f"goto {ext}"
    assert r.chains[ext][0] == "jump mark-for-masquerade"  # Cluster policy
    assert not [k for k in r.elements if k[0] in (SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS)]  # no node port
    r = service_port_rules(CFG, _sp(external_ips=("192.0.2.10",), external_local=True), [REMOTE])
    assert r.elements[(NO_ENDPOINT_SERVICES, key)] == "drop"
    r = service_port_rules(CFG, _sp(external_ips=("192.0.2.10",)), [UNREADY])
    assert r.elements[(NO_ENDPOINT_SERVICES, key)] == "goto reject-chain"
    r = service_port_rules(CFG, _sp(protocol="UDP", external_ips=("192.0.2.10",)), [REMOTE])
    assert ("192.0.2.10", 80, 0, frozenset({"10.244.1.5"})) in r.udp  # its flows flushed as the clusterIP's


def test_client_ip_affinity_sets_per_endpoint_checked_before_the_random_choice():
    r = service_port_rules(CFG, _sp(affinity_timeout=60), [LOCAL, REMOTE])
    assert len(r.sets) == 2 and all("timeout 60s" in d for d in r.sets.values())
    (chain,) = [c for c in r.chains if c.startswith("service-")]
    body = r.chains[chain]
    assert [b.split()[2][1:] for b in body if "@affinity-" in b] == sorted(r.sets)
    assert body[-1].startswith("numgen")
    # a new timeout is a new set (nft would keep the old timeout on "add set")
    r2 = service_port_rules(CFG, _sp(affinity_timeout=30), [LOCAL, REMOTE])
    assert not set(r.sets) & set(r2.sets)


def test_partial_transaction_rewrites_only_what_changed():
    old = service_port_rules(CFG, _sp(), [LOCAL, REMOTE])
    new = service_port_rules(CFG, _sp(), [LOCAL])
    tx, gone = transaction.partial(old, new)
    script = tx.script()
    assert gone == {c for c in old.chains if "10.244.1.5" in c}
    kept = next(c for c in new.chains if "10.244.0.5" in c)
    assert f"flush chain ip kube-proxy {kept}" not in script  # unchanged: left alone
    assert "numgen random mod 1" in script
    assert "element" not in script  # the service's map entries did not change
    # nothing changed: nothing to do
    assert transaction.partial(new, new)[0].empty()
    # to no endpoints: the element moves from service-ips to no-endpoint-services, in order
    tx, _ = transaction.partial(new, service_port_rules(CFG, _sp(), []))
    lines = tx.script().splitlines()
    dele = next(i for i, ln in enumerate(lines) if ln.startswith("delete element"))
    add = next(i for i, ln in enumerate(lines) if ln.startswith("add element"))
    assert dele < add and "service-ips" in lines[dele] and "no-endpoint-services" in lines[add]


def test_full_transaction_flushes_stale_chains_and_deletes_stale_affinity_sets():
    services = service_port_rules(CFG, _sp(), [LOCAL])
    stale_chain = "endpoint-XXXXXXXX-default/old/tcp/http__10.244.9.9/80"
    stale_set = "affinity-XXXXXXXX-default/old/tcp/http__10.244.9.9/80/t60"
    tx, stale = transaction.full(base_rules(CFG), services, {"services", stale_chain},
                                 {stale_set, "cluster-ips"})
    script = tx.script()
    assert stale == {stale_chain}
    assert f"flush chain ip kube-proxy {stale_chain}" in script
    assert f"delete set ip kube-proxy {stale_set}" in script
    assert "delete set ip kube-proxy cluster-ips" not in script
    assert script.index("flush map ip kube-proxy service-ips") < script.index("add element")
    for chain in services.chains:
        assert f"flush chain ip kube-proxy {chain}" in script


def test_runner_batches_requests_within_the_minimum_interval():
    calls: list[float] = []
    runner = BoundedFrequencyRunner(lambda: calls.append(time.monotonic()), 0.3, 60.0).start()
    try:
        time.sleep(0.1)
        assert calls == []  # never asked: never runs
        for _ in range(50):
            runner.run()
            time.sleep(0.004)
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.35)
        assert len(calls) == 2  # the first at once, the other 49 requests folded into one
        assert calls[1] - calls[0] >= 0.3 - 0.01
    finally:
        runner.stop()


def test_runner_retries_when_the_function_asks():
    calls: list[float] = []
    done = threading.Event()

    def fn():
        calls.append(time.monotonic())
        if len(calls) == 3:
            done.set()
            return None
        return 0.05

    runner = BoundedFrequencyRunner(fn, 0.01, 60.0).start()
    try:
        runner.run()
        assert done.wait(5)
    finally:
        runner.stop()


def test_command_line_durations_and_required_flags():
    assert duration("1s") == 1.0 and duration("250ms") == 0.25 and duration("1m30s") == 90.0
    for bad in ("", "1x", "s"):
        with pytest.raises(Exception):
            duration(bad)
    args = build_parser().parse_args(["--node-name", "n0", "--node-netns", "kp0000-n0",
                                      "--node-ip", "10.250.0.1", "--min-sync-period", "200ms"])
    assert args.min_sync_period == 0.2 and args.cluster_cidr == "10.244.0.0/16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--node-name", "n0", "--node-netns", "x", "--node-ip", "nope"])


def test_endpoint_slices_read_with_their_conditions():
    discovery_pb2 = pytest.importorskip(
        "apiserver.pb.discovery_pb2", reason="EndpointSlice kind not on this branch yet (svcalloc)")
    from node.proxy.model import endpoints_from_slices

    a = discovery_pb2.EndpointSlice(address_type="IPv4")
    a.metadata.labels["kubernetes.io/service-name"] = "web"
    a.ports.add(name="http", protocol="TCP", port=8080)
    e = a.endpoints.add(addresses=["10.244.0.5"], node_name="n0")
    e.conditions.ready = True
    e = a.endpoints.add(addresses=["10.244.1.5"])  # conditions unset: ready
    e = a.endpoints.add(addresses=["10.244.1.6"])
    e.conditions.ready, e.conditions.serving, e.conditions.terminating = False, True, True
    b = discovery_pb2.EndpointSlice(address_type="IPv4")
    b.ports.add(name="http", protocol="TCP", port=8080)
    e = b.endpoints.add(addresses=["10.244.0.5"], node_name="n0")  # the same one, in 2 slices
    e.conditions.ready = False
    v6 = discovery_pb2.EndpointSlice(address_type="IPv6")
    v6.ports.add(name="http", protocol="TCP", port=8080)
    v6.endpoints.add(addresses=["fd00::1"])
    got = endpoints_from_slices([a, b, v6])[("http", "TCP")]
    assert [(x.ip, x.ready, x.serving_terminating) for x in got] == [
        ("10.244.0.5", True, False), ("10.244.1.5", True, False), ("10.244.1.6", False, True)]


def test_serving_terminating_endpoints_are_used_only_when_none_is_ready():
    term = EndpointInfo("10.244.1.7", 8080, "n1", ready=False, serving=True, terminating=True)
    assert _dnats(service_port_rules(CFG, _sp(), [REMOTE, term])) == {"10.244.1.5:8080"}
    assert _dnats(service_port_rules(CFG, _sp(), [term, UNREADY])) == {"10.244.1.7:8080"}
