"""Cluster DNS throughput and latency as a pod on another node sees it: `python -m node.dns` in
node 0's namespace (at 10.250.0.1:53) serving a real apiserver's Services, queried over the
fabric from node 1's namespace by a load process that keeps C queries in flight (closed loop)
for a few seconds. Two mixes: the same Service names again and again (what pods ask; the
server's answer cache serves them), and names never asked before (each a parse, a lookup and a
render: the server's worst case). Needs root (namespaces).

    python -m benchmarks.dns_bench [--services 1000] [--seconds 5] [--concurrency 1,16]
        [--out benchmarks/dns_bench_results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

LOAD = r"""
import json, os, random, select, socket, struct, sys, time
import dns.message
port, seconds, inflight, mix, services = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
server = (sys.argv[6], port)
names = [f"svc{i}.bench.svc.cluster.local" for i in range(services)]
def query(n):
    name = names[n % len(names)] if mix == "repeated" else f"u{n}-{os.getpid()}.bench.svc.cluster.local"
    return dns.message.make_query(name, "A").to_wire()
pre = [query(n) for n in range(200000 if mix == "unique" else len(names))]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
pending = {}  # id -> send time
lat, lost, n = [], 0, 0
def send():
    global n
    wire = bytearray(pre[n % len(pre)])
    qid = n & 0xFFFF
    wire[0:2] = struct.pack("!H", qid)
    pending[qid] = time.perf_counter()
    s.sendto(bytes(wire), server)
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
    from apiserver.pb import core_pb2
    from harness.plane import start_apiserver, start_component
    from harness.procs import PYTHON, Registry
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
            info["create"] = time.perf_counter() - t

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
        for mix in ("repeated", "unique"):
            for c in concurrency:
                cpu0 = _cpu(dns_proc)
                out = subprocess.run(["ip", "netns", "exec", n1.name, PYTHON, "-c", LOAD, "53", str(seconds),
                                      str(c), mix, str(services), n0.ip],
                                     capture_output=True, text=True, timeout=seconds + 120)
                if out.returncode != 0:
                    raise RuntimeError(f"load process failed: {out.stderr.strip()[-500:]}")
                cpu = _cpu(dns_proc) - cpu0 if cpu0 is not None else None
                got = json.loads(out.stdout)
                lat = got["lat"]
                rows.append({"mix": mix, "inflight": c, "qps": got["answered"] / got["seconds"],
                             "p50": _pct(lat, 0.5) * 1000, "p99": _pct(lat, 0.99) * 1000,
                             "max": max(lat) * 1000 if lat else float("nan"), "lost": got["lost"],
                             "server_cpu": cpu / got["seconds"] if cpu is not None else None})
        return rows, info
    finally:
        reg.cleanup()
        fab.destroy()
        network.cleanup(prefix)


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
        "# Cluster DNS: queries/s and latency from another node's namespace (node/dns)", "",
        f"- command: `python -m benchmarks.dns_bench --services {args.services} --seconds {args.seconds:g} "
        f"--concurrency {args.concurrency}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; git commit: {_commit()}",
        f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average at end (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- {args.services} Services in the apiserver (made in {info['create']:.1f} s); the server answered "
        f"for all of them {info['start_to_ready']:.1f} s after it was started",
        "- server: `python -m node.dns` in node 0's netns; client: one process in node 1's netns over the "
        "fabric, C queries in flight, UDP; `repeated`: Service names (answer cache), `unique`: a new "
        "name per query (NXDOMAIN built each time)",
        "",
        "| mix | in flight | queries/s | p50 ms | p99 ms | max ms | lost | server CPU (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = f"{r['server_cpu']:.2f}" if r["server_cpu"] is not None else "-"
        lines.append(f"| {r['mix']} | {r['inflight']} | {r['qps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                     f"{r['max']:.1f} | {r['lost']} | {cpu} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dns_bench")
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("dns_bench needs root (network namespaces)", file=sys.stderr)
        return 1
    rows, info = run(args.services, args.seconds, [int(c) for c in args.concurrency.split(",")])
    text = report(rows, info, args)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
