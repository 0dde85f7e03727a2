"""Pod network costs on this machine: what the runtime pays per sandbox for its network (netns
create, attach, detach, netns delete) on a 3-node fabric, as p50/p99/max. Needs root.

    python -m benchmarks.pod_network [--pods 100] [--out benchmarks/pod_network_results.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.output import emit
from node import network
from node.network import fabric, pod


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(pods: int) -> dict[str, list[float]]:
    prefix = network.new_prefix()
    fab = fabric.Fabric(prefix)
    times: dict[str, list[float]] = {k: [] for k in
                                     ("fabric + 3 nodes", "create_netns", "attach", "detach",
                                      "delete_netns")}
    state = tempfile.mkdtemp(prefix=f"{prefix}-ipam-")
    try:
        t = time.perf_counter()
        fab.create()
        nodes = [fab.add_node(i) for i in range(3)]
        times["fabric + 3 nodes"].append(time.perf_counter() - t)
        made = []
        for k in range(pods):
            node = nodes[k % 3]
            sid = f"{k:010x}" + "b" * 54
            name = f"{node.name}-{sid[:10]}"
            t = time.perf_counter()
            pod.create_netns(name)
            t1 = time.perf_counter()
            pod.attach(name, node.name, node.pod_cidr, os.path.join(state, node.name), sid)
            t2 = time.perf_counter()
            times["create_netns"].append(t1 - t)
            times["attach"].append(t2 - t1)
            made.append((name, node, sid))
        for name, node, sid in made:
            t = time.perf_counter()
            pod.detach(name, node.name, os.path.join(state, node.name), sid)
            t1 = time.perf_counter()
            pod.delete_netns(name)
            times["detach"].append(t1 - t)
            times["delete_netns"].append(time.perf_counter() - t1)
    finally:
        network.cleanup(prefix)
        subprocess.run(["rm", "-rf", state])
    return times


def report(times: dict[str, list[float]], pods: int) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Pod network: per-sandbox costs (node/network)", "",
        f"- command: `python -m benchmarks.pod_network --pods {pods}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; git commit: {commit}",
        f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, Python "
        f"{platform.python_version()}; load average at end (1/5/15 min): {load}",
        f"- {pods} pods over 3 nodes, attached one after another, then detached", "",
        "| step | p50 ms | p99 ms | max ms |", "|---|---|---|---|"]
    for k, xs in times.items():
        lines.append(f"| {k} | {statistics.median(xs) * 1e3:.1f} | {_pct(xs, 0.99) * 1e3:.1f} | "
                     f"{max(xs) * 1e3:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    text = report(run(args.pods), args.pods)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
