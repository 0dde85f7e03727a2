"""The cluster's DNS records, as the Kubernetes DNS specification (kubernetes/dns
docs/specification.md) lays them out under the cluster domain (``cluster.local``):

- ``<svc>.<ns>.svc.<zone>`` A: the clusterIP; for a headless Service, each ready endpoint's IP
  (no ready endpoint: the name does not exist), and ``<hostname>.<svc>.<ns>.svc.<zone>`` A per
  ready endpoint (hostname: the endpoint's own, else its IP dashed, as CoreDNS names them);
- ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` SRV for each named port (target the Service name,
  or each endpoint's name for a headless Service, with its A records as additional data);
- ``<d>.<c>.<b>.<a>.in-addr.arpa`` PTR for clusterIPs and headless endpoints;
- an ExternalName Service: a CNAME to its external name;
- ``<a>-<b>-<c>-<d>.<ns>.pod.<zone>`` A <a>.<b>.<c>.<d> for any address (CoreDNS' ``pods
  insecure``, kubeadm's default);
- the zone's SOA and NS, ``ns.dns.<zone>`` A (the server's address) and ``dns-version.<zone>`` TXT.

``Records`` holds them per Service (``set_service``/``set_endpoints``, from the informers'
threads) in one index name -> type -> RRset, changed per Service, so a change costs that
Service's records, not the cluster's; the RRsets are built once per change (dnspython hashes
each record it adds to a set, which costs more than rendering it), and answers share them. ``lookup`` answers one question: an ``Answer`` with the
DNS result code and sections, or None for a name outside what this server is authoritative for
(the caller answers REFUSED: there is no upstream to forward to). Names compare case-insensitively.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass, field

import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.SRV import SRV

IN = dns.rdataclass.IN
T_A, T_AAAA, T_SRV, T_PTR, T_CNAME = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV,
                                      dns.rdatatype.PTR, dns.rdatatype.CNAME)
T_SOA, T_NS, T_TXT, T_ANY = dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.TXT, dns.rdatatype.ANY

SCHEMA_VERSION = "1.1.0"  # of the DNS specification these records follow
REVERSE_ZONE = "in-addr.arpa"
# SOA timers as CoreDNS' kubernetes plugin gives them; the last (negative-caching TTL) is the TTL
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400


@dataclass(frozen=True)
class Port:
    name: str
    protocol: str  # TCP, UDP, SCTP
    port: int


@dataclass(frozen=True)
class ServiceInfo:
    """What DNS needs of a Service: its address ("" while it has none, "None" when headless),
    named and unnamed ports, and the external name of an ExternalName Service."""
    namespace: str
    name: str
    cluster_ip: str
    ports: tuple[Port, ...] = ()
    external_name: str = ""

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


@dataclass(frozen=True)
class EndpointInfo:
    """One ready endpoint address of a Service with the ports it serves."""
    ip: str
    hostname: str = ""
    ports: tuple[Port, ...] = ()

    @property
    def label(self) -> str:
        """Its name under the Service: the endpoint's hostname, else the IP dashed."""
        return (self.hostname or self.ip.replace(".", "-")).lower()


@dataclass
class Answer:
    """Sections as lists of RRsets, shared with the records: never modify them (copy first)."""
    rcode: int
    answer: list = field(default_factory=list)
    additional: list = field(default_factory=list)
    authority: list = field(default_factory=list)
    authoritative: bool = True


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def reverse_name(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + "." + REVERSE_ZONE


def _ipv4(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False


Fragment = dict  # name -> rdtype -> RRset


def _rrsets(lists: dict, ttl: int) -> Fragment:
    """{name: {rdtype: [rdata]}} as {name: {rdtype: RRset}}."""
    out: Fragment = {}
    for name, types in lists.items():
        owner = _name(name)
        for rdtype, rdatas in types.items():
            rrset = dns.rrset.RRset(owner, IN, rdtype)
            for rd in rdatas:
                rrset.add(rd, ttl)
            out.setdefault(name, {})[rdtype] = rrset
    return out


class Records:
    def __init__(self, zone: str = "cluster.local", ttl: int = 5, server_ips: tuple[str, ...] = ()):
        self.zone = zone.strip(".").lower()
        self.ttl = ttl
        self._lock = threading.RLock()
        self._services: dict[str, ServiceInfo] = {}
        self._endpoints: dict[str, tuple[EndpointInfo, ...]] = {}
        self._fragments: dict[str, Fragment] = {}  # service key -> its records
        self._index: dict[str, dict[str, Fragment]] = {}  # name -> {key: fragment part}
        self._ancestors: dict[str, int] = {}  # names below the zone holding records deeper down
        self.generation = 0  # bumped at each change: answers cached by the server go stale
        self._zone_fragment(server_ips)

    # ---- the zone's own records ----

    def _zone_fragment(self, server_ips: tuple[str, ...]) -> None:
        z = self.zone
        ns_name = f"ns.dns.{z}"
        self.soa = SOA(IN, T_SOA, _name(ns_name), _name(f"hostmaster.{z}"), 1, SOA_REFRESH,
                       SOA_RETRY, SOA_EXPIRE, self.ttl)
        lists = {
            z: {T_SOA: [self.soa], T_NS: [NS(IN, T_NS, _name(ns_name))]},
            f"dns-version.{z}": {T_TXT: [TXT(IN, T_TXT, [SCHEMA_VERSION])]},
        }
        if server_ips:
            lists[ns_name] = {T_A: [A(IN, T_A, ip) for ip in server_ips]}
        frag = _rrsets(lists, self.ttl)
        self.soa_rrset = frag[z][T_SOA]
        self._replace("", frag)

    # ---- changes (informer threads) ----

    def set_service(self, svc: ServiceInfo | None, key: str | None = None) -> None:
        """Store (or with None, remove) a Service; ``key`` is ``ns/name``."""
        key = key or f"{svc.namespace}/{svc.name}"
        with self._lock:
            if svc is None:
                self._services.pop(key, None)
            else:
                self._services[key] = svc
            self._rebuild(key)

    def set_endpoints(self, key: str, endpoints: list[EndpointInfo] | tuple | None) -> None:
        """The ready endpoints of Service ``key`` (None or empty: none)."""
        eps = tuple(sorted(set(endpoints or ()), key=lambda e: (e.ip, e.hostname)))
        with self._lock:
            if self._endpoints.get(key, ()) == eps:
                return
            if eps:
                self._endpoints[key] = eps
            else:
                self._endpoints.pop(key, None)
            if self._services.get(key) is not None and self._services[key].headless:
                self._rebuild(key)

    def _rebuild(self, key: str) -> None:
        svc = self._services.get(key)
        self._replace(key, self._service_fragment(svc, self._endpoints.get(key, ())) if svc else {})

    def _service_fragment(self, svc: ServiceInfo, endpoints: tuple[EndpointInfo, ...]) -> Fragment:
        base = f"{svc.name}.{svc.namespace}.svc.{self.zone}".lower()
        frag: dict = {}  # name -> rdtype -> [rdata] (SRV: (port, target) until weighed)

        def add(name: str, rdtype, rdata) -> None:
            frag.setdefault(name, {}).setdefault(rdtype, []).append(rdata)

        if svc.external_name:
            add(base, T_CNAME, CNAME(IN, T_CNAME, _name(svc.external_name)))
            return _rrsets(frag, self.ttl)
        if svc.headless:
            for ep in endpoints:
                if not _ipv4(ep.ip):
                    continue
                host = f"{ep.label}.{base}"
                add(base, T_A, A(IN, T_A, ep.ip))
                add(host, T_A, A(IN, T_A, ep.ip))
                add(reverse_name(ep.ip), T_PTR, PTR(IN, T_PTR, _name(host)))
                for p in ep.ports:
                    if p.name:
                        srv = f"_{p.name}._{p.protocol}.{base}".lower()
                        add(srv, T_SRV, (p.port, host))
            self._weigh_srv(frag)
            return _rrsets(frag, self.ttl)
        if not _ipv4(svc.cluster_ip):
            return {}  # no address yet (or IPv6 only): no records, the name does not exist
        add(base, T_A, A(IN, T_A, svc.cluster_ip))
        add(reverse_name(svc.cluster_ip), T_PTR, PTR(IN, T_PTR, _name(base)))
        for p in svc.ports:
            if p.name:
                add(f"_{p.name}._{p.protocol}.{base}".lower(), T_SRV, (p.port, base))
        self._weigh_srv(frag)
        return _rrsets(frag, self.ttl)

    @staticmethod
    def _weigh_srv(frag: dict) -> None:
        """SRV records of one name share the weight 100 evenly, priority 0 (as CoreDNS)."""
        for types in frag.values():
            pending = types.get(T_SRV)
            if pending:
                weight = max(1, 100 // len(pending))
                types[T_SRV] = [SRV(IN, T_SRV, 0, weight, port, _name(target))
                                for port, target in sorted(set(pending))]

    def _replace(self, key: str, frag: Fragment) -> None:
        with self._lock:
            old = self._fragments.pop(key, {})
            for name in old:
                parts = self._index.get(name)
                if parts is not None:
                    parts.pop(key, None)
                    if not parts:
                        del self._index[name]
                for anc in self._ancestors_of(name):
                    n = self._ancestors[anc] - 1
                    if n:
                        self._ancestors[anc] = n
                    else:
                        del self._ancestors[anc]
            if frag:
                self._fragments[key] = frag
                for name, types in frag.items():
                    self._index.setdefault(name, {})[key] = types
                    for anc in self._ancestors_of(name):
                        self._ancestors[anc] = self._ancestors.get(anc, 0) + 1
            self.generation += 1

    def _ancestors_of(self, name: str) -> list[str]:
        """The names strictly between ``name`` and its zone (empty non-terminals when nothing
        else is there)."""
        top = self.zone if name.endswith("." + self.zone) else REVERSE_ZONE
        if not name.endswith("." + top):
            return []
        labels = name[: -len(top) - 1].split(".")
        return [".".join(labels[i:]) + "." + top for i in range(1, len(labels))]

    # ---- questions ----

    def authoritative_for(self, qname: str) -> bool:
        return qname == self.zone or qname.endswith("." + self.zone)

    def lookup(self, qname: str, qtype: int) -> Answer | None:
        """The answer to ``qname`` (text, any case, with or without the final dot) ``qtype``;
        None when the name is outside the cluster domain and no PTR of ours."""
        name = qname.rstrip(".").lower()
        if name.endswith("." + REVERSE_ZONE):
            with self._lock:
                types = self._merged(name)
            if not types:
                return None  # not one of our addresses: not ours to deny either
            return self._answer_from(name, types, qtype)
        if not self.authoritative_for(name):
            return None
        pod_ip = self._pod_address(name)
        if pod_ip is not None:
            if qtype in (T_A, T_ANY):
                return Answer(dns.rcode.NOERROR, [_rrsets({name: {T_A: [A(IN, T_A, pod_ip)]}}, self.ttl)[name][T_A]])
            return self._nodata()
        with self._lock:
            types = self._merged(name)
            exists = bool(types) or name in self._ancestors or name in self._structural()
        if not exists:
            return Answer(dns.rcode.NXDOMAIN, authority=[self.soa_rrset])
        return self._answer_from(name, types, qtype)

    def _structural(self) -> tuple[str, ...]:
        """Names that exist by the schema even when empty."""
        return (f"svc.{self.zone}", f"pod.{self.zone}")

    def _merged(self, name: str) -> Fragment:
        parts = self._index.get(name)
        if not parts:
            return {}
        if len(parts) == 1:
            return next(iter(parts.values()))
        merged: Fragment = {}
        for types in parts.values():
            for rdtype, rrset in types.items():
                if rdtype in merged:
                    merged[rdtype] = merged[rdtype].union(rrset)
                else:
                    merged[rdtype] = rrset
        return merged

    def _answer_from(self, name: str, types: Fragment, qtype: int) -> Answer:
        if qtype == T_ANY:
            ans = Answer(dns.rcode.NOERROR, list(types.values()))
        elif qtype in types:
            ans = Answer(dns.rcode.NOERROR, [types[qtype]])
        elif T_CNAME in types:
            ans = Answer(dns.rcode.NOERROR, [types[T_CNAME]])
        else:
            return self._nodata(name)
        self._add_additional(ans)
        return ans

    def _add_additional(self, ans: Answer) -> None:
        """A records of the names an SRV or NS answer points at, where we hold them."""
        seen = set()
        for rrset in ans.answer:
            if rrset.rdtype not in (T_SRV, T_NS):
                continue
            for rd in rrset:
                target = rd.target.to_text(omit_final_dot=True).lower()
                if target in seen:
                    continue
                seen.add(target)
                with self._lock:
                    a = self._merged(target).get(T_A)
                if a:
                    ans.additional.append(a)

    def _nodata(self, name: str = "") -> Answer:
        if name.endswith("." + REVERSE_ZONE):
            return Answer(dns.rcode.NOERROR)
        return Answer(dns.rcode.NOERROR, authority=[self.soa_rrset])

    def _pod_address(self, name: str) -> str | None:
        """``a-b-c-d.<ns>.pod.<zone>`` -> "a.b.c.d"; None for any other name."""
        suffix = f".pod.{self.zone}"
        if not name.endswith(suffix):
            return None
        labels = name[: -len(suffix)].split(".")
        if len(labels) != 2 or not labels[1]:
            return None
        ip = labels[0].replace("-", ".")
        return ip if labels[0].count("-") == 3 and _ipv4(ip) else None

    # ---- reading (tests, the server's status) ----

    def services(self) -> int:
        with self._lock:
            return len(self._services)
