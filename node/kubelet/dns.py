"""A pod's DNS settings (the CRI DNSConfig the runtime writes as the pod's resolv.conf), as the
kubelet's dns configurer (pkg/kubelet/network/dns) decides them from ``spec.dnsPolicy``:

- ClusterFirst (the default): the cluster DNS (``--cluster-dns``), the search list
  ``<ns>.svc.<domain> svc.<domain> <domain>`` followed by the node's own searches, and
  ``options ndots:5``; a hostNetwork pod gets the node's settings instead (Default), and so does
  every pod when no cluster DNS is configured (the kubelet warns);
- ClusterFirstWithHostNet: the cluster's, hostNetwork or not;
- Default: the node's resolv.conf (``--resolv-conf``; '' for none) as it is;
- None: nothing but the pod's own ``spec.dnsConfig`` (where the API carries one).

A pod's ``dnsConfig`` adds to that: nameservers and searches appended (duplicates dropped),
options merged by name. The result keeps to the resolver's limits as the kubelet trims it: 3
nameservers, 32 search domains and 2048 characters of searches.
"""

from __future__ import annotations

import logging

from node.pb import cri_pb2

log = logging.getLogger("node.kubelet.dns")

CLUSTER_FIRST, CLUSTER_FIRST_WITH_HOST_NET, DEFAULT, NONE = (
    "ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
MAX_SEARCH_CHARS = 2048
CLUSTER_OPTIONS = ("ndots:5",)


def parse_resolv_conf(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, searches, options) of a resolv.conf; the last search/domain line wins,
    as in the C library."""
    servers, searches, options = [], [], []
    for line in text.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "nameserver" and len(fields) > 1:
            servers.append(fields[1])
        elif fields[0] in ("search", "domain"):
            searches = [s.rstrip(".") for s in fields[1:]]
        elif fields[0] == "options":
            options.extend(fields[1:])
    return servers, searches, options


def _dedup(items) -> list[str]:
    seen, out = set(), []
    for i in items:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def _merge_options(base: list[str], extra: list[str]) -> list[str]:
    """Options by name (``ndots:5`` is named ndots); a later one replaces an earlier one."""
    merged: dict[str, str] = {}
    for opt in [*base, *extra]:
        merged[opt.split(":", 1)[0]] = opt
    return list(merged.values())


class DnsConfigurer:
    def __init__(self, cluster_dns: list[str] | tuple[str, ...] = (), cluster_domain: str = "cluster.local",
                 resolv_conf: str = "/etc/resolv.conf") -> None:
        self.cluster_dns = [s for s in cluster_dns if s]
        self.cluster_domain = cluster_domain.strip(".")
        self.resolv_conf = resolv_conf
        self._warned = False

    def host_config(self) -> tuple[list[str], list[str], list[str]]:
        if not self.resolv_conf:
            return [], [], []
        try:
            with open(self.resolv_conf) as f:
                return parse_resolv_conf(f.read())
        except OSError as e:
            log.warning("cannot read the node's resolver settings %s: %s (pods with dnsPolicy "
                        "Default get none)", self.resolv_conf, e)
            return [], [], []

    def policy(self, pod) -> str:
        """Which settings the pod gets: ClusterFirst (the cluster's), Default (the node's) or None."""
        policy = pod.spec.dns_policy or CLUSTER_FIRST
        if policy == NONE:
            return NONE
        if policy == DEFAULT or (policy == CLUSTER_FIRST and pod.spec.host_network):
            return DEFAULT
        if not self.cluster_dns:
            if not self._warned:
                log.warning("pods with dnsPolicy %s get the node's DNS settings: the kubelet has no "
                            "--cluster-dns", policy)
                self._warned = True
            return DEFAULT
        return CLUSTER_FIRST

    def pod_dns(self, pod) -> cri_pb2.DNSConfig:
        policy = self.policy(pod)
        servers: list[str]
        searches: list[str]
        options: list[str]
        if policy == NONE:
            servers, searches, options = [], [], []
        elif policy == DEFAULT:
            servers, searches, options = self.host_config()
        else:
            d = self.cluster_domain
            host_searches = self.host_config()[1]
            servers = list(self.cluster_dns)
            searches = [f"{pod.metadata.namespace}.svc.{d}", f"svc.{d}", d, *host_searches]
            options = list(CLUSTER_OPTIONS)
        own = _pod_dns_config(pod)
        if own is not None:
            servers = [*servers, *own.nameservers]
            searches = [*searches, *own.searches]
            options = _merge_options(options, [f"{o.name}:{o.value}" if o.HasField("value") else o.name
                                               for o in own.options])
        return cri_pb2.DNSConfig(servers=_dedup(servers)[:MAX_NAMESERVERS], searches=_fit(_dedup(searches)),
                                 options=options)


def _fit(searches: list[str]) -> list[str]:
    out, total = [], 0
    for s in searches[:MAX_SEARCHES]:
        total += len(s) + (1 if out else 0)
        if total > MAX_SEARCH_CHARS:
            break
        out.append(s)
    return out


def _pod_dns_config(pod):
    """The pod's spec.dnsConfig where the API has that field (not yet in ours: None)."""
    spec = pod.spec
    if "dns_config" not in type(spec).DESCRIPTOR.fields_by_name or not spec.HasField("dns_config"):
        return None
    return spec.dns_config
