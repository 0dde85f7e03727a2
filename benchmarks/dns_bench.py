"""Cluster DNS throughput and latency as pods see it: `python -m node.dns` in node 0's namespace
(at 10.250.0.1:53) serving a real apiserver's Services, queried by a load process that keeps C
queries in flight (closed loop) for a few seconds, from two places:

- ``node``: node 1's namespace, straight to the server's address over the fabric (the server
  alone);
- ``pod``: the network namespace of a real pod on node 1 (control plane, kubelets, kube-proxies
  and the DNS as harness.nodes runs them), to the kube-dns clusterIP 10.96.0.10 its resolv.conf
  names, so kube-proxy's DNAT on node 1 and the crossing to node 0 are in every query, as for a
  pod's resolver; plus busybox ``nslookup`` run in the pod's container, one process per query.

Two mixes: the same Service names again and again (what pods ask; the server's answer cache
serves them), and names never asked before (each a parse, a lookup and a render: the server's
worst case). Needs root (namespaces) and, for ``pod``, what real nodes need (node.capable).

    python -m benchmarks.dns_bench [--services 1000] [--seconds 5] [--concurrency 1,16]
        [--from node,pod] [--out benchmarks/dns_bench_results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from benchmarks.output import emit

LOAD = r"""
import json, os, select, socket, struct, sys, time
port, seconds, inflight, mix, services = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
server = (sys.argv[6], port)
def wire(name):  # a query for name's A record, recursion desired, no EDNS (as dnspython's make_query)
    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split("."))
    return struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)
names = [wire(f"svc{i}.bench.svc.cluster.local") for i in range(services)]
tag = os.getpid()
def query(n):  # a few microseconds: a never-asked name is made when sent
    return names[n % len(names)] if mix == "repeated" else wire(f"u{n}-{tag}.bench.svc.cluster.local")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
pending = {}  # id -> send time
lat, lost, n = [], 0, 0
def send():
    global n
    msg = bytearray(query(n))
    qid = n & 0xFFFF
    msg[0:2] = struct.pack("!H", qid)
    pending[qid] = time.perf_counter()
    s.sendto(bytes(msg), server)
    n += 1
end = time.perf_counter() + seconds
for _ in range(inflight):
    send()
while time.perf_counter() < end:
    r, _, _ = select.select([s], [], [], 0.5)
    if not r:  # answers lost (dropped): resend as many
        lost += len(pending); pending.clear()
        for _ in range(inflight):
            send()
        continue
    while True:
        try:
            data = s.recv(65535)
        except BlockingIOError:
            break
        t = pending.pop(struct.unpack("!H", data[:2])[0], None)
        if t is not None:
            lat.append(time.perf_counter() - t)
            send()
print(json.dumps({"answered": len(lat), "lost": lost, "seconds": seconds, "lat": lat}))
"""


def _log(what: str) -> None:
    print(f"[dns_bench {time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        return "?"


def run(services: int, seconds: float, concurrency: list[int]) -> tuple[list[dict], dict]:
    from apiserver.client import Client
    from harness.plane import start_apiserver, start_component
    from harness.procs import Registry
    from node import network
    from node.network.fabric import Fabric
    from node.network.netns import socket_in

    import dns.message
    import dns.query

    prefix = network.new_prefix()
    fab = Fabric(prefix)
    reg = Registry()
    tmp = tempfile.mkdtemp(prefix=f"{prefix}-dnsbench-")
    rows, info = [], {}
    try:
        fab.create()
        n0, n1 = fab.add_node(0), fab.add_node(1)
        etcd = reg.start_etcdlite(tmp, name="etcd")
        api = start_apiserver(tmp, etcd.url, registry=reg)
        with Client(api.endpoint, timeout=30) as client:
            info["create"] = _make_services(client, services)

        def ready() -> bool:
            sock = socket_in(n1.name, socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                q = dns.message.make_query(f"svc{services - 1}.bench.svc.cluster.local", "A")
                return bool(dns.query.udp(q, n0.ip, timeout=1, sock=sock).answer)
            except Exception:
                return False
            finally:
                sock.close()

        t = time.perf_counter()
        dns_proc = start_component(tmp, "dns", "node.dns", api.endpoint, reg, ready=ready, listen=f"{n0.ip}:53",
                        netns=n0.name, log_level="warning", register="")
        info["start_to_ready"] = time.perf_counter() - t
        rows = _load_rows("node", ["ip", "netns", "exec", n1.name], n0.ip, dns_proc, seconds, concurrency,
                          services)
        return rows, info
    finally:
        reg.cleanup()
        fab.destroy()
        network.cleanup(prefix)


def _load_rows(where: str, netns_argv: list[str], server_ip: str, dns_proc, seconds: float,
               concurrency: list[int], services: int) -> list[dict]:
    from harness.procs import PYTHON

    rows = []
    for mix in ("repeated", "unique"):
        for c in concurrency:
            _log(f"{where}: {mix}, {c} in flight")
            cpu0 = _cpu(dns_proc)
            out = subprocess.run([*netns_argv, PYTHON, "-c", LOAD, "53", str(seconds), str(c), mix,
                                  str(services), server_ip],
                                 capture_output=True, text=True, timeout=seconds + 120)
            if out.returncode != 0:
                raise RuntimeError(f"load process failed: {out.stderr.strip()[-500:]}")
            cpu = _cpu(dns_proc) - cpu0 if cpu0 is not None else None
            got = json.loads(out.stdout)
            lat = got["lat"]
            rows.append({"from": where, "mix": mix, "inflight": c, "qps": got["answered"] / got["seconds"],
                         "p50": _pct(lat, 0.5) * 1000, "p99": _pct(lat, 0.99) * 1000,
                         "max": max(lat) * 1000 if lat else float("nan"), "lost": got["lost"],
                         "server_cpu": cpu / got["seconds"] if cpu is not None else None})
    return rows


def run_from_pod(services: int, seconds: float, concurrency: list[int]) -> tuple[list[dict], dict]:
    """The same load from a real pod's network namespace through the kube-dns clusterIP, and
    busybox nslookup in the pod's container."""
    from apiserver.client import Client
    from apiserver.manifest import from_dict
    from harness.etcd_client import wait_until
    from harness.nodes import real_nodes
    from harness.plane import start_control_plane
    from harness.procs import Registry
    from node.cri.client import CriClient
    from node.plane import KUBE_DNS_IP

    reg = Registry()
    tmp = tempfile.mkdtemp(prefix="dnsbench-pod-")
    info: dict = {}
    try:
        _log("from a pod: control plane and 2 real nodes (kube-proxy, DNS)")
        api = start_control_plane(tmp, reg)
        with real_nodes(tmp, api.endpoint, 2, services=True) as nodes, Client(api.endpoint, timeout=30) as client:
            _make_services(client, services)
            client.create(from_dict({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dnsbench", "namespace": "default"},
                "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]}}))

            def running():
                p = client.get("pods", "dnsbench", "default")
                return p if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions) else None

            _log(f"{services} Services made; waiting for the pod")
            pod = wait_until(running, 120, what="the benchmark pod Ready")
            with CriClient(nodes.layout.nodes[1].cri_socket, timeout=60) as runtime:
                [cid] = [c.id for c in runtime.list_containers()
                         if c.labels.get("io.kubernetes.pod.uid") == pod.metadata.uid and c.state == 1]
                pid = int(runtime.container_status(cid, verbose=True).info["pid"])
                last = f"svc{services - 1}.bench.svc.cluster.local"

                def answers():  # the last Service, through the clusterIP, from the pod's own resolver
                    got = runtime.exec_sync(cid, ["nslookup", last], timeout=10)
                    return got.exit_code == 0

                wait_until(answers, 120, what=f"{last} resolved in the pod through {KUBE_DNS_IP}")
                _log("the pod resolves through the clusterIP; load")
                rows = _load_rows("pod", ["nsenter", "-t", str(pid), "-n"], KUBE_DNS_IP, nodes.dns,
                                  seconds, concurrency, services)
                n = 200
                loop = f"i=0; while [ $i -lt {n} ]; do nslookup {last} >/dev/null || echo FAILED; i=$((i+1)); done"
                t = time.perf_counter()
                got = runtime.exec_sync(cid, ["sh", "-c", loop], timeout=120)
                took = time.perf_counter() - t
                _log("done; removing the nodes")
                info["nslookup"] = {"n": n, "seconds": took, "failed": got.stdout.decode().count("FAILED")}
        return rows, info
    finally:
        reg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)  # (real_nodes has removed the nodes' mounts)


def _make_services(client, services: int) -> float:
    from apiserver.pb import core_pb2

    ns = core_pb2.Namespace()
    ns.metadata.name = "bench"
    client.create(ns)
    t = time.perf_counter()
    for i in range(services):
        svc = core_pb2.Service()
        svc.metadata.name, svc.metadata.namespace = f"svc{i}", "bench"
        svc.spec.cluster_ip = f"10.96.{16 + i // 250}.{i % 250 + 1}"
        svc.spec.ports.add(name="http", protocol="TCP", port=80)
        client.create(svc)
    return time.perf_counter() - t


def _cpu(proc) -> float | None:
    """CPU seconds (user + system) the server process has used so far."""
    if proc is None or proc.pid is None:
        return None
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def report(rows: list[dict], info: dict, args) -> str:
    load = os.getloadavg()
    lines = [
        "# Cluster DNS: queries/s and latency from another node's namespace and from a pod (node/dns)", "",
        f"- command: `python -m benchmarks.dns_bench --services {args.services} --seconds {args.seconds:g} "
        f"--concurrency {args.concurrency} --from {args.where}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; git commit: {_commit()}",
        f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average at end (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
    ]
    if "create" in info:
        lines.append(f"- {args.services} Services in the apiserver (made in {info['create']:.1f} s); the server "
                     f"answered for all of them {info['start_to_ready']:.1f} s after it was started")
    lines += [
        "- server: `python -m node.dns` in node 0's netns; C queries in flight, UDP, from one process: "
        "`node`: in node 1's netns, to the server's address over the fabric; `pod`: in the network "
        "namespace of a busybox pod on node 1, to the kube-dns clusterIP 10.96.0.10 (kube-proxy's DNAT, "
        "as for the pod's resolver); `repeated`: Service names (answer cache), `unique`: a new name per "
        "query (NXDOMAIN built each time)",
        "",
        "| from | mix | in flight | queries/s | p50 ms | p99 ms | max ms | lost | server CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = f"{r['server_cpu']:.2f}" if r["server_cpu"] is not None else "-"
        lines.append(f"| {r['from']} | {r['mix']} | {r['inflight']} | {r['qps']:.0f} | {r['p50']:.2f} | "
                     f"{r['p99']:.2f} | {r['max']:.1f} | {r['lost']} | {cpu} |")
    if "nslookup" in info:
        ns = info["nslookup"]
        lines += ["", f"busybox `nslookup` in the pod's container, one process per query, one at a time: "
                      f"{ns['n']} lookups in {ns['seconds']:.2f} s ({ns['n'] / ns['seconds']:.0f}/s, "
                      f"{ns['seconds'] / ns['n'] * 1000:.1f} ms each, process start included), "
                      f"{ns['failed']} failed"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dns_bench")
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--from", dest="where", default="node,pod",
                   help="where the load runs: node (node 1's netns), pod (a pod's netns, via the clusterIP)")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("dns_bench needs root (network namespaces)", file=sys.stderr)
        return 1
    where = {w.strip() for w in args.where.split(",") if w.strip()}
    if not where or where - {"node", "pod"}:
        print(f"--from {args.where!r}: give node, pod or node,pod", file=sys.stderr)
        return 2
    concurrency = [int(c) for c in args.concurrency.split(",")]
    rows, info = [], {}
    if "node" in where:
        rows, info = run(args.services, args.seconds, concurrency)
    if "pod" in where:
        from node import capable

        reason = capable.why_not()
        if reason:
            print(f"dns_bench --from pod needs real nodes: {reason}", file=sys.stderr)
            return 1
        pod_rows, pod_info = run_from_pod(args.services, args.seconds, concurrency)
        rows += pod_rows
        info.update(pod_info)
    text = report(rows, info, args)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
