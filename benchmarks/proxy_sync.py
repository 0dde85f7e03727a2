"""kube-proxy (nftables mode) costs on this machine. Needs root, nft and conntrack.

1. One sync at SERVICES x ENDPOINTS (default 1,000 x 10), nft inside a fresh node namespace:
   the Python side (rules computed, transaction written) and the nft transaction, for the first
   full sync (empty table), a full resync over that table (a restarted proxy), and a partial sync
   of one Endpoints change; rules and map elements in the table.
2. Network programming latency: a real etcdlite + apiserver holding those Services and Endpoints,
   a Proxier per node (in this process, each programming its own node namespace) syncing through
   the API, and CHANGES Endpoints updates (one endpoint replaced each time, at RATE per second);
   latency = the change's trigger time (``endpoints.kubernetes.io/last-change-trigger-time``, set
   by the writer as the endpoints controller would) -> the end of the nft transaction holding it.

    python -m benchmarks.proxy_sync [--services 1000] [--endpoints 10] [--changes 300]
        [--rate 20] [--nodes 1] [--min-sync-period 1] [--out benchmarks/proxy_sync_results.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

from benchmarks.output import emit
from node import network
from node.network import fabric
from node.proxy import nft, transaction
from node.proxy.model import EndpointInfo, ServicePortInfo
from node.proxy.proxier import TRIGGER_ANNOTATION, Proxier
from node.proxy.rules import NodeConfig, Rules, base_rules, service_port_rules


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _cluster_ip(k: int) -> str:
    return f"10.96.{k // 250}.{k % 250 + 2}"


def _endpoint_ip(k: int, j: int, nodes: int) -> tuple[str, str]:
    """Endpoint j of service k: a distinct address, spread over the nodes."""
    n = k * 10 + j
    return f"10.{100 + n // 62500}.{n // 250 % 250}.{n % 250 + 2}", f"n{n % nodes}"


def _table_rules(ns: str) -> int:
    """Rules in the table, counted as nft prints them (one a line inside a chain)."""
    rules, in_chain = 0, False
    for line in nft.list_table(ns).splitlines():
        s = line.strip()
        if s.startswith("chain "):
            in_chain = True
        elif s == "}":
            in_chain = False
        elif in_chain and s and not s.startswith("type "):
            rules += 1
    return rules


def sync_cost(services: int, endpoints: int) -> dict:
    prefix = network.new_prefix()
    fab = fabric.Fabric(prefix)
    out: dict = {}
    try:
        fab.create()
        node = fab.add_node(0)
        cfg = NodeConfig("n0", node.ip, "10.244.0.0/16")
        ports = [ServicePortInfo("bench", f"svc{k}", "http", "TCP", _cluster_ip(k), 80)
                 for k in range(services)]
        eps = [[EndpointInfo(_endpoint_ip(k, j, 3)[0], 8080, _endpoint_ip(k, j, 3)[1])
                for j in range(endpoints)] for k in range(services)]

        t = time.perf_counter()
        per = {k: service_port_rules(cfg, ports[k], eps[k]) for k in range(services)}
        t_rules = time.perf_counter() - t
        wanted = Rules()
        for r in per.values():
            wanted.update(r)
        t = time.perf_counter()
        tx, _ = transaction.full(base_rules(cfg), wanted, nft.list_chains(node.name),
                                 nft.list_sets(node.name))
        script = tx.script()
        t_script = time.perf_counter() - t
        t = time.perf_counter()
        nft.run_script(node.name, script)
        out["first full sync: nft"] = time.perf_counter() - t
        out["first full sync: rules computed"] = t_rules
        out["first full sync: transaction written"] = t_script
        out["script lines"] = script.count("\n")
        out["script bytes"] = len(script)

        t = time.perf_counter()
        tx, stale = transaction.full(base_rules(cfg), wanted, nft.list_chains(node.name),
                                     nft.list_sets(node.name))
        script = tx.script()
        t_script = time.perf_counter() - t
        t = time.perf_counter()
        nft.run_script(node.name, script)
        out["full resync over the table: nft"] = time.perf_counter() - t
        out["full resync: list kernel chains + write transaction"] = t_script
        assert not stale

        # one Endpoints change: service 17 loses endpoint 3 and gains a new one
        k = 17
        new_eps = [e for j, e in enumerate(eps[k]) if j != 3] + [EndpointInfo("10.99.0.1", 8080,
                                                                              "n1")]
        t = time.perf_counter()
        new = service_port_rules(cfg, ports[k], new_eps)
        tx, gone = transaction.partial(per[k], new)
        script = tx.script()
        t_script = time.perf_counter() - t
        t = time.perf_counter()
        nft.run_script(node.name, script)
        out["partial sync (1 service changed): nft"] = time.perf_counter() - t
        out["partial sync: rules + transaction"] = t_script
        out["partial sync: script lines"] = script.count("\n")
        out["rules in table (listed back from the kernel)"] = _table_rules(node.name)
        out["map and set elements written"] = len(wanted.elements) + len(base_rules(cfg).elements)
        out["chains in table"] = len(nft.list_chains(node.name))
    finally:
        network.cleanup(prefix)
    return out


def programming_latency(services: int, endpoints: int, changes: int, rate: float, nodes: int,
                        min_sync: float) -> dict:
    from harness.plane import start_apiserver
    from harness.procs import Registry

    from apiserver.client import Client
    from apiserver.pb import core_pb2

    prefix = network.new_prefix()
    fab = fabric.Fabric(prefix)
    reg = Registry()
    tmp = tempfile.mkdtemp(prefix=f"{prefix}-bench-")
    proxiers: list[Proxier] = []
    out: dict = {}
    try:
        fab.create()
        nets = [fab.add_node(i) for i in range(nodes)]
        member = reg.start_etcdlite(tmp, name="etcd")
        api = start_apiserver(tmp, member.url, registry=reg)
        client = Client(api.endpoint, timeout=60)
        ns = core_pb2.Namespace()
        ns.metadata.name = "bench"
        client.create(ns)
        t = time.perf_counter()
        for k in range(services):
            svc = core_pb2.Service()
            svc.metadata.name, svc.metadata.namespace = f"svc{k}", "bench"
            svc.spec.cluster_ip = _cluster_ip(k)
            svc.spec.ports.add(name="http", port=80, target_port="8080", protocol="TCP")
            client.create(svc)
            client.create(_endpoints(core_pb2, k, endpoints, nodes, 0))
        out["objects written (2 per service)"] = time.perf_counter() - t

        t = time.perf_counter()
        for node in nets:
            cfg = NodeConfig(f"n{node.name.rsplit('n', 1)[1]}", node.ip, "10.244.0.0/16")
            p = Proxier(Client(api.endpoint, timeout=60), cfg, node.name,
                        min_sync_period=min_sync, sync_period=30.0)
            proxiers.append(p.start(wait_for_sync=300))
        for p in proxiers:
            if not p.wait_synced(300):
                raise RuntimeError("first sync did not happen within 300 s")
        out["start to first full sync (all nodes)"] = time.perf_counter() - t
        out["first full sync (per node, s)"] = [
            round(next(d for full, d in p.stats.sync_durations if full), 3) for p in proxiers]
        for p in proxiers:
            p.stats.programming_latencies.clear()

        rnd = random.Random(1)
        versions = {k: 0 for k in range(services)}
        period = 1.0 / rate
        t0 = time.perf_counter()
        for c in range(changes):
            k = rnd.randrange(services)
            versions[k] += 1
            ep = _endpoints(core_pb2, k, endpoints, nodes, versions[k])
            cur = client.get("endpoints", f"svc{k}", "bench")
            ep.metadata.resource_version = cur.metadata.resource_version
            client.update(ep)
            delay = t0 + (c + 1) * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        out["changes written"] = changes
        out["write window (s)"] = time.perf_counter() - t0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                len(p.stats.programming_latencies) < changes for p in proxiers):
            time.sleep(0.1)
        lat = [x for p in proxiers for x in p.stats.programming_latencies]
        out["latencies measured"] = len(lat)
        out["latency p50 (s)"] = statistics.median(lat)
        out["latency p99 (s)"] = _pct(lat, 0.99)
        out["latency max (s)"] = max(lat)
        partial = [d for p in proxiers for full, d in p.stats.sync_durations if not full]
        out["partial syncs"] = len(partial)
        out["partial sync p50 / p99 (s)"] = (round(statistics.median(partial), 4),
                                             round(_pct(partial, 0.99), 4)) if partial else None
    finally:
        for p in proxiers:
            p.stop()
        reg.cleanup()
        network.cleanup(prefix)
        subprocess.run(["rm", "-rf", tmp])
    return out


def _endpoints(core_pb2, k: int, endpoints: int, nodes: int, version: int):
    """Service k's Endpoints; each version replaces one endpoint by a new address."""
    ep = core_pb2.Endpoints()
    ep.metadata.name, ep.metadata.namespace = f"svc{k}", "bench"
    ep.metadata.annotations[TRIGGER_ANNOTATION] = \
        datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    subset = ep.subsets.add()
    for j in range(endpoints):
        ip, node = _endpoint_ip(k, j, nodes)
        if version and j == version % endpoints:
            ip = f"10.{200 + version // 62500}.{version // 250 % 250}.{version % 250 + 2}"
        subset.addresses.add(ip=ip, node_name=node)
    subset.ports.add(name="http", port=8080, protocol="TCP")
    return ep


def report(args, sync: dict, lat: dict) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    nftv = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# kube-proxy (nftables mode): sync cost and network programming latency", "",
        f"- command: `python -m benchmarks.proxy_sync --services {args.services} --endpoints "
        f"{args.endpoints} --changes {args.changes} --rate {args.rate} --nodes {args.nodes} "
        f"--min-sync-period {args.min_sync_period}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; git commit: {commit}",
        f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, {nftv}, Python "
        f"{platform.python_version()}; load average at end (1/5/15 min): {load}", "",
        f"## One sync at {args.services} Services x {args.endpoints} endpoints", "",
        "| what | value |", "|---|---|"]
    for k, v in sync.items():
        lines.append(f"| {k} | {v * 1e3:.1f} ms |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += ["", f"## Network programming latency ({args.changes} Endpoints changes at "
              f"{args.rate}/s, {args.nodes} node(s), minSyncPeriod {args.min_sync_period} s)", "",
              "| what | value |", "|---|---|"]
    for k, v in lat.items():
        lines.append(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=300)
    ap.add_argument("--rate", type=float, default=20.0, help="Endpoints changes per second")
    ap.add_argument("--nodes", type=int, default=1, help="proxies (node namespaces)")
    ap.add_argument("--min-sync-period", type=float, default=1.0)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or nft.nft_binary() is None:
        print("needs root and nft (apt-get install nftables conntrack)", file=sys.stderr)
        return 2
    sync = sync_cost(args.services, args.endpoints)
    print(sync, flush=True)
    lat = {} if args.skip_latency else programming_latency(
        args.services, args.endpoints, args.changes, args.rate, args.nodes, args.min_sync_period)
    text = report(args, sync, lat)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
