"""ClusterIP and NodePort allocation against a real etcdlite member and a real
apiserver process: the ``kubernetes`` Service, automatic and requested values
with Kubernetes' messages, headless and ExternalName Services, type changes,
freeing on delete, racing creates, allocations surviving an apiserver
restart, the repair loop (leaks, lost records, duplicates written behind the
apiserver's back) and a range that runs out.

The pure parts (the ranges, the field rules) are tested first."""

from __future__ import annotations

import ipaddress
import json
import random
import threading

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2, networking_pb2
from apiserver.service_alloc import port_key
from apiserver.service_ranges import PortRange, RangeError, ServiceCIDR
from harness.etcd_client import Client as EtcdClient
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite, start_apiserver
from harness.procs import Registry

NS = "alloc"
CIDR = ipaddress.ip_network("10.96.0.0/12")


# ---- pure parts ----

def test_cidr_picks_from_the_upper_band_first_and_reports_full():
    cidr = ServiceCIDR.parse("10.96.0.0/24")  # 254 usable, 16 kept for static picks
    rng = random.Random(1)
    taken: set[str] = set()
    first = [cidr.pick(taken, rng) for _ in range(5)]
    assert all(int(ip.rsplit(".", 1)[1]) > 16 for ip in first)
    for _ in range(254):
        taken.add(cidr.pick(taken, rng))
    assert len(taken) == 254 and "10.96.0.0" not in taken and "10.96.0.255" not in taken
    with pytest.raises(RangeError, match="range is full"):
        cidr.pick(taken, rng)
    with pytest.raises(RangeError, match=r"the provided IP \(10.97.0.1\) is not in the valid range. "
                                         r"The range of valid IPs is 10.96.0.0/24"):
        cidr.check("10.97.0.1")
    assert ServiceCIDR.parse("10.96.0.0/12").first() == "10.96.0.1"
    for bad in ("fd00::/112", "10.0.0.0/8", "nope", "10.0.0.0/30"):
        with pytest.raises(ValueError):
            ServiceCIDR.parse(bad)


def test_port_range_parses_like_upstream_and_picks_free_ports():
    r = PortRange.parse("30000-32767")
    assert (r.base, r.size, str(r)) == (30000, 2768, "30000-32767")
    assert str(PortRange.parse("30000+4")) == "30000-30004"
    picked = set()
    for _ in range(5):
        picked.add(PortRange.parse("30000+4").pick(picked))
    assert picked == set(range(30000, 30005))
    with pytest.raises(RangeError, match="range is full"):
        PortRange.parse("30000+4").pick(picked)
    with pytest.raises(RangeError, match="provided port is not in the valid range. "
                                         "The range of valid ports is 30000-32767"):
        r.check(80)
    for bad in ("32767-30000", "x", "0-5", "1-70000"):
        with pytest.raises(ValueError):
            PortRange.parse(bad)


# ---- against an apiserver ----

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "svcalloc", service_repair_interval=1) as api:
        yield api


@pytest.fixture(scope="module")
def client(plane):
    with Client(plane.endpoint, timeout=15) as c:
        c.create(core_pb2.Namespace(metadata={"name": NS}))
        yield c


def svc(name, *, type_="", cluster_ip="", ports=((80, 0),), selector=None, **spec):
    s = core_pb2.Service()
    s.metadata.name, s.metadata.namespace = name, NS
    if type_:
        s.spec.type = type_
    if cluster_ip:
        s.spec.cluster_ip = cluster_ip
    s.spec.selector.update(selector if selector is not None else {"app": name})
    for i, (port, node_port) in enumerate(ports):
        s.spec.ports.add(name=f"p{i}", port=port, node_port=node_port)
    for k, v in spec.items():
        setattr(s.spec, k, v)
    return s


def invalid(client, obj) -> str:
    with pytest.raises(ApiError) as e:
        client.create(obj)
    assert e.value.reason == "Invalid", e.value.message
    return e.value.message


def ip_record(client, ip):
    try:
        return client.get("ipaddresses", ip, "")
    except ApiError as e:
        if e.reason == "NotFound":
            return None
        raise


def port_held(plane, port) -> bool:
    etcd = plane.etcd_servers.replace("http://", "")
    with EtcdClient(etcd) as c:
        return bool(c.get(port_key(port)).kvs)


@pytest.mark.process
def test_kubernetes_service_has_the_first_address(plane, client):
    k = client.get("services", "kubernetes", "default")
    assert k.spec.cluster_ip == "10.96.0.1" and list(k.spec.cluster_ips) == ["10.96.0.1"]
    assert [(p.name, p.port, p.protocol, p.target_port) for p in k.spec.ports] == \
        [("https", 443, "TCP", str(plane.port))]
    assert list(k.spec.ip_families) == ["IPv4"] and k.spec.ip_family_policy == "SingleStack"
    rec = client.get("ipaddresses", "10.96.0.1", "")
    assert (rec.spec.parent_ref.resource, rec.spec.parent_ref.namespace, rec.spec.parent_ref.name) == \
        ("services", "default", "kubernetes")
    ep = client.get("endpoints", "kubernetes", "default")
    assert [(a.ip, p.port) for s in ep.subsets for a in s.addresses for p in s.ports] == [("127.0.0.1", plane.port)]
    eps = client.get("endpointslices", "kubernetes", "default")
    assert eps.address_type == "IPv4" and list(eps.endpoints[0].addresses) == ["127.0.0.1"]
    assert eps.endpoints[0].conditions.ready and eps.ports[0].port == plane.port


@pytest.mark.process
def test_cluster_ip_is_allocated_and_recorded(client):
    s = client.create(svc("auto"))
    ip = s.spec.cluster_ip
    assert ipaddress.ip_address(ip) in CIDR and list(s.spec.cluster_ips) == [ip]
    # dynamic picks come from above the 256 addresses kept for static ones
    assert int(ipaddress.ip_address(ip)) - int(CIDR.network_address) > 256
    assert list(s.spec.ip_families) == ["IPv4"] and s.spec.ip_family_policy == "SingleStack"
    assert s.spec.internal_traffic_policy == "Cluster"
    rec = ip_record(client, ip)
    assert rec.spec.parent_ref.name == "auto" and rec.spec.parent_ref.namespace == NS
    assert rec.metadata.labels["ipaddress.kubernetes.io/managed-by"] == "ipallocator.k8s.io"


@pytest.mark.process
def test_requested_cluster_ip_errors_are_kubernetes(client):
    s = client.create(svc("static", cluster_ip="10.96.0.10"))
    assert list(s.spec.cluster_ips) == ["10.96.0.10"]
    msg = invalid(client, svc("static2", cluster_ip="10.96.0.10"))
    assert msg == ('Service "static2" is invalid: spec.clusterIPs: Invalid value: []string{"10.96.0.10"}: '
                   'failed to allocate IP 10.96.0.10: provided IP is already allocated')
    msg = invalid(client, svc("outside", cluster_ip="10.0.0.1"))
    assert msg == ('Service "outside" is invalid: spec.clusterIPs: Invalid value: []string{"10.0.0.1"}: '
                   'failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. '
                   'The range of valid IPs is 10.96.0.0/12')
    msg = invalid(client, svc("six", cluster_ip="fd00::10"))
    assert msg == ('Service "six" is invalid: spec.clusterIPs[0]: Invalid value: []string{"fd00::10"}: '
                   'IPv6 is not configured on this cluster')
    dual = svc("dual")
    dual.spec.ip_family_policy = "RequireDualStack"
    assert invalid(client, dual) == ('Service "dual" is invalid: spec.ipFamilyPolicy: Invalid value: '
                                     '"RequireDualStack": this cluster is not configured for dual-stack services')
    v6 = svc("v6")
    v6.spec.ip_families.append("IPv6")
    assert invalid(client, v6) == ('Service "v6" is invalid: spec.ipFamilies[0]: Invalid value: "IPv6": '
                                   'not configured on this cluster')
    bad = svc("bad", cluster_ip="10.96.0.300")
    assert "spec.clusterIPs[0]: Invalid value: \"10.96.0.300\": must be a valid IP address" in invalid(client, bad)
    mismatch = svc("mismatch", cluster_ip="10.96.0.11")
    mismatch.spec.cluster_ips.append("10.96.0.12")
    assert invalid(client, mismatch) == ('Service "mismatch" is invalid: spec.clusterIPs: Invalid value: '
                                         '[]string{"10.96.0.12"}: first value must match `clusterIP`')
    # nothing was held by the refused creates
    assert ip_record(client, "10.96.0.11") is None and ip_record(client, "10.96.0.12") is None
    # the address is immutable
    s.spec.cluster_ip = "10.96.0.13"
    s.spec.cluster_ips[0] = "10.96.0.13"
    with pytest.raises(ApiError) as e:
        client.update(s)
    assert e.value.message == ('Service "static" is invalid: spec.clusterIPs[0]: Invalid value: '
                               '[]string{"10.96.0.13"}: may not change once set')


@pytest.mark.process
def test_node_ports_are_allocated_with_kubernetes_errors(plane, client):
    s = client.create(svc("np", type_="NodePort", ports=((80, 0), (443, 0))))
    ports = [p.node_port for p in s.spec.ports]
    assert all(30000 <= p <= 32767 for p in ports) and len(set(ports)) == 2
    assert s.spec.external_traffic_policy == "Cluster"
    assert all(port_held(plane, p) for p in ports)
    fixed = client.create(svc("np-fixed", type_="NodePort", ports=((80, 30080),)))
    assert fixed.spec.ports[0].node_port == 30080
    msg = invalid(client, svc("np-taken", type_="NodePort", ports=((80, 30080),)))
    assert msg == ('Service "np-taken" is invalid: spec.ports[0].nodePort: Invalid value: 30080: '
                   'provided port is already allocated')
    msg = invalid(client, svc("np-out", type_="NodePort", ports=((80, 8080),)))
    assert msg == ('Service "np-out" is invalid: spec.ports[0].nodePort: Invalid value: 8080: '
                   'provided port is not in the valid range. The range of valid ports is 30000-32767')
    msg = invalid(client, svc("np-cip", ports=((80, 30081),)))
    assert msg == ('Service "np-cip" is invalid: spec.ports[0].nodePort: Forbidden: '
                   "may not be used when `type` is 'ClusterIP'")
    # a refused create held neither its address nor its other ports
    msg = invalid(client, svc("np-half", type_="NodePort", cluster_ip="10.96.0.20", ports=((80, 30082), (81, 30080))))
    assert "spec.ports[1].nodePort: Invalid value: 30080: provided port is already allocated" in msg
    assert not port_held(plane, 30082) and ip_record(client, "10.96.0.20") is None
    # one service port over TCP and UDP shares one node port, as upstream allocates it
    dns = svc("dns", type_="NodePort", ports=((53, 0), (53, 0)))
    dns.spec.ports[1].protocol = "UDP"
    dns = client.create(dns)
    assert dns.spec.ports[0].node_port == dns.spec.ports[1].node_port and port_held(plane, dns.spec.ports[0].node_port)
    lb = client.create(svc("lb", type_="LoadBalancer"))
    assert 30000 <= lb.spec.ports[0].node_port <= 32767 and lb.spec.allocate_load_balancer_node_ports


@pytest.mark.process
def test_delete_frees_address_and_ports(plane, client):
    s = client.create(svc("gone", type_="NodePort", cluster_ip="10.96.0.30", ports=((80, 30300),)))
    assert ip_record(client, "10.96.0.30") and port_held(plane, 30300)
    client.delete("services", "gone", NS)
    assert ip_record(client, "10.96.0.30") is None and not port_held(plane, 30300)
    again = client.create(svc("again", type_="NodePort", cluster_ip="10.96.0.30", ports=((80, 30300),)))
    assert again.spec.cluster_ip == s.spec.cluster_ip and again.spec.ports[0].node_port == 30300


@pytest.mark.process
def test_headless_and_external_name(plane, client):
    h = client.create(svc("headless", cluster_ip="None"))
    assert list(h.spec.cluster_ips) == ["None"] and list(h.spec.ip_families) == ["IPv4"]
    assert ip_record(client, "None") is None
    bare = client.create(svc("headless-bare", cluster_ip="None", selector={}))
    # upstream: headless and selectorless defaults to RequireDualStack with both families
    assert bare.spec.ip_family_policy == "RequireDualStack" and list(bare.spec.ip_families) == ["IPv4", "IPv6"]
    msg = invalid(client, svc("headless-np", type_="NodePort", cluster_ip="None"))
    assert msg == ('Service "headless-np" is invalid: spec.clusterIPs[0]: Invalid value: "None": '
                   "may not be set to 'None' for NodePort services")
    ext = svc("ext", type_="ExternalName", ports=(), external_name="db.example.com")
    ext = client.create(ext)
    assert not ext.spec.cluster_ip and not ext.spec.cluster_ips and not ext.spec.ip_families
    msg = invalid(client, svc("ext2", type_="ExternalName", ports=(), cluster_ip="10.96.0.40",
                              external_name="db.example.com"))
    assert "spec.clusterIPs: Forbidden: may not be set for ExternalName services" in msg
    assert "spec.externalName: Required value" in invalid(client, svc("ext3", type_="ExternalName", ports=()))


@pytest.mark.process
def test_type_changes_take_and_free_what_the_type_needs(plane, client):
    s = client.create(svc("morph"))
    ip = s.spec.cluster_ip
    s.spec.type = "NodePort"
    s = client.update(s)
    port = s.spec.ports[0].node_port
    assert s.spec.cluster_ip == ip and 30000 <= port <= 32767 and port_held(plane, port)
    # a client that sends what it first wrote (no address, no port) keeps both
    plain = svc("morph", type_="NodePort")
    plain.metadata.resource_version = s.metadata.resource_version
    s = client.update(plain)
    assert s.spec.cluster_ip == ip and s.spec.ports[0].node_port == port
    # back to ClusterIP: the port goes, the address stays
    s.spec.type = "ClusterIP"
    s = client.update(s)
    assert s.spec.ports[0].node_port == 0 and not port_held(plane, port) and s.spec.cluster_ip == ip
    assert not s.spec.external_traffic_policy
    # to ExternalName: the address goes
    s.spec.type = "ExternalName"
    s.spec.external_name = "example.com"
    s = client.update(s)
    assert not s.spec.cluster_ip and not s.spec.cluster_ips and ip_record(client, ip) is None
    # and back: a new address
    s.spec.type = "ClusterIP"
    s.spec.external_name = ""
    s = client.update(s)
    assert s.spec.cluster_ip and ip_record(client, s.spec.cluster_ip).spec.parent_ref.name == "morph"
    # a patch to NodePort with a port taken by another Service is refused and changes nothing
    with pytest.raises(ApiError) as e:
        client.patch("services", "morph", {"spec": {"type": "NodePort", "ports": [
            {"name": "p0", "port": 80, "nodePort": 30080}]}}, NS)
    assert e.value.reason == "Invalid" and "provided port is already allocated" in e.value.message
    assert client.get("services", "morph", NS).spec.type == "ClusterIP"


def _race(client_endpoint, objects):
    """Creates ``objects`` from as many threads at once; [(name, ok, message)]."""
    results = []
    barrier = threading.Barrier(len(objects))

    def one(obj):
        with Client(client_endpoint, timeout=15) as c:
            barrier.wait()
            try:
                c.create(obj)
                results.append((obj.metadata.name, True, ""))
            except ApiError as e:
                results.append((obj.metadata.name, False, e.message))

    threads = [threading.Thread(target=one, args=(o,)) for o in objects]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.mark.process
def test_racing_creates_for_one_address_or_port_have_one_winner(plane, client):
    for round_ in range(3):
        ip = f"10.96.0.{50 + round_}"
        results = _race(plane.endpoint, [svc(f"race{round_}-{i}", cluster_ip=ip) for i in range(6)])
        winners = [name for name, ok, _ in results if ok]
        assert len(winners) == 1, results
        assert all("provided IP is already allocated" in m for _, ok, m in results if not ok), results
        assert ip_record(client, ip).spec.parent_ref.name == winners[0]
    results = _race(plane.endpoint, [svc(f"prace-{i}", type_="NodePort", ports=((80, 31500),)) for i in range(6)])
    assert len([r for r in results if r[1]]) == 1, results
    assert all("provided port is already allocated" in m for _, ok, m in results if not ok), results
    # automatic picks never collide: every racer gets its own
    results = _race(plane.endpoint, [svc(f"arace-{i}", type_="NodePort") for i in range(8)])
    assert all(ok for _, ok, _ in results), results
    got = [client.get("services", f"arace-{i}", NS) for i in range(8)]
    assert len({s.spec.cluster_ip for s in got}) == 8 and len({s.spec.ports[0].node_port for s in got}) == 8


def _put_raw_service(plane, client, name, cluster_ip):
    """A Service written straight into etcd, as a restored backup or a
    buggy tool would: no allocation record goes with it."""
    template = client.get("services", "auto", NS)
    template.metadata.name = name
    template.metadata.uid = f"raw-{name}"
    template.metadata.resource_version = ""
    template.spec.cluster_ip = cluster_ip
    del template.spec.cluster_ips[:]
    if cluster_ip:
        template.spec.cluster_ips.append(cluster_ip)
    else:
        del template.spec.ip_families[:]
        template.spec.ClearField("ip_family_policy")
    value = b"kpb1\x00Service\x00" + template.SerializeToString(deterministic=True)
    with EtcdClient(plane.etcd_servers.replace("http://", "")) as c:
        c.put(f"/registry/services/{NS}/{name}".encode(), value)


def _events(client, name, reason):
    return [e for e in client.list("events", NS).items
            if e.involved_object.name == name and e.reason == reason]


@pytest.mark.process
def test_repair_frees_leaks_restores_records_and_reports_duplicates(plane, client):
    # a leaked address: an IPAddress whose Service does not exist
    leak = networking_pb2.IPAddress()
    leak.metadata.name = "10.96.0.60"
    leak.metadata.labels["ipaddress.kubernetes.io/managed-by"] = "ipallocator.k8s.io"
    leak.spec.parent_ref.resource, leak.spec.parent_ref.namespace, leak.spec.parent_ref.name = "services", NS, "ghost"
    client.create(leak)
    # one made by hand for other uses is not the allocator's to free
    mine = networking_pb2.IPAddress()
    mine.metadata.name = "10.96.0.61"
    mine.spec.parent_ref.resource, mine.spec.parent_ref.name = "gateways", "gw"
    client.create(mine)
    # a leaked port record
    with EtcdClient(plane.etcd_servers.replace("http://", "")) as c:
        c.put(port_key(31999), json.dumps({"namespace": NS, "name": "ghost"}).encode())
    # a Service that lost its record
    lost = client.create(svc("lost", type_="NodePort"))
    client.delete("ipaddresses", lost.spec.cluster_ip, "")
    # a duplicate, written behind the apiserver's back
    _put_raw_service(plane, client, "dup", client.get("services", "auto", NS).spec.cluster_ip)
    # a Service stored before Services had addresses (an older apiserver's data)
    _put_raw_service(plane, client, "old", "")

    wait_until(lambda: ip_record(client, "10.96.0.60") is None, timeout=15, what="leaked IP freed")
    wait_until(lambda: not port_held(plane, 31999), timeout=15, what="leaked port freed")
    wait_until(lambda: ip_record(client, lost.spec.cluster_ip) is not None, timeout=15, what="lost record restored")
    assert ip_record(client, lost.spec.cluster_ip).spec.parent_ref.name == "lost"
    assert ip_record(client, "10.96.0.61") is not None
    wait_until(lambda: _events(client, "lost", "ClusterIPNotAllocated"), timeout=15, what="repair event")
    assert _events(client, "lost", "ClusterIPNotAllocated")[0].message == \
        f"Cluster IP [IPv4]: {lost.spec.cluster_ip} is not allocated; repairing"
    wait_until(lambda: _events(client, "dup", "ClusterIPAlreadyAllocated"), timeout=15, what="duplicate event")
    # the rightful holder keeps its record
    assert ip_record(client, client.get("services", "auto", NS).spec.cluster_ip).spec.parent_ref.name == "auto"
    client.delete("services", "dup", NS)
    wait_until(lambda: client.get("services", "old", NS).spec.cluster_ip, timeout=15, what="old Service addressed")
    old = client.get("services", "old", NS)
    assert list(old.spec.cluster_ips) == [old.spec.cluster_ip]
    assert ip_record(client, old.spec.cluster_ip).spec.parent_ref.name == "old"


@pytest.mark.process
def test_allocations_survive_an_apiserver_restart(plane, client):
    kept = client.create(svc("kept", type_="NodePort"))
    plane.terminate()
    plane.start()
    with Client(plane.endpoint, timeout=15) as c:
        assert c.get("services", "kubernetes", "default").spec.cluster_ip == "10.96.0.1"
        assert c.get("services", "kept", NS).spec.cluster_ip == kept.spec.cluster_ip
        msg = invalid(c, svc("kept2", cluster_ip=kept.spec.cluster_ip))
        assert "provided IP is already allocated" in msg
        msg = invalid(c, svc("kept3", type_="NodePort", ports=((80, kept.spec.ports[0].node_port),)))
        assert "provided port is already allocated" in msg
        fresh = c.create(svc("fresh"))
        assert fresh.spec.cluster_ip not in (kept.spec.cluster_ip, "10.96.0.1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "svctiny", service_cluster_ip_range="10.100.0.0/29",
                               service_node_port_range="30000-30001") as api:
        with Client(api.endpoint, timeout=15) as c:
            c.create(core_pb2.Namespace(metadata={"name": NS}))
            yield c


@pytest.mark.process
def test_a_range_that_runs_out_says_so(tiny):
    assert tiny.get("services", "kubernetes", "default").spec.cluster_ip == "10.100.0.1"
    made = [tiny.create(svc(f"t{i}")) for i in range(5)]  # 6 usable addresses, 1 is kubernetes'
    assert sorted(s.spec.cluster_ip for s in made) == [f"10.100.0.{i}" for i in range(2, 7)]
    with pytest.raises(ApiError) as e:
        tiny.create(svc("t5"))
    assert e.value.reason == "InternalError"
    assert "failed to allocate a serviceIP: range is full" in e.value.message
    tiny.delete("services", "t0", NS)
    assert tiny.create(svc("t6")).spec.cluster_ip == made[0].spec.cluster_ip
    tiny.delete("services", "t1", NS)
    tiny.create(svc("np0", type_="NodePort"))
    tiny.delete("services", "t2", NS)
    tiny.create(svc("np1", type_="NodePort"))
    tiny.delete("services", "t3", NS)
    with pytest.raises(ApiError) as e:
        tiny.create(svc("np2", type_="NodePort"))
    assert "failed to allocate a nodePort: range is full" in e.value.message


@pytest.mark.process
def test_allocation_on_the_real_etcd(tmp_path, etcd_binaries):
    """The same Txns (claims, nested frees) on etcd 3.4 itself: a create, a
    race for one address, a type change and a delete."""
    reg = Registry()
    try:
        member = reg.start_real_etcd(tmp_path, name="etcd")
        api = start_apiserver(tmp_path, member.url, registry=reg)
        with Client(api.endpoint, timeout=15) as c:
            c.create(core_pb2.Namespace(metadata={"name": NS}))
            assert c.get("services", "kubernetes", "default").spec.cluster_ip == "10.96.0.1"
            results = _race(api.endpoint, [svc(f"r{i}", cluster_ip="10.96.0.77") for i in range(4)])
            assert len([r for r in results if r[1]]) == 1, results
            s = c.create(svc("morph", type_="NodePort"))
            port = s.spec.ports[0].node_port
            s.spec.type = "ClusterIP"
            s = c.update(s)
            assert s.spec.ports[0].node_port == 0
            assert c.create(svc("taker", type_="NodePort", ports=((80, port),))).spec.ports[0].node_port == port
            c.delete("services", "morph", NS)
            assert ip_record(c, s.spec.cluster_ip) is None
    finally:
        reg.cleanup()
