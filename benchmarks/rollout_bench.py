"""Failed requests during a rolling update, as pods see them: 3 real nodes (kube-proxy, cluster
DNS), a Deployment of busybox httpd pods behind a Service, and a client pod on every node
requesting ``http://web/`` with busybox wget in a loop (10 a second at most each) while the
Deployment rolls to a new version (maxSurge 1, maxUnavailable 0), until every old pod is gone.

Each setting is rolled out twice and the second rollout is measured: what decides whether a
request fails is how the *old* pods stop (their preStop hook, their readiness), so they must have
the setting too. The settings are the three a Kubernetes user meets: readiness probe and a preStop
sleep (the usual advice for zero-downtime rollouts: the endpoint leaves every node's rules before
the server stops), readiness without preStop (SIGTERM races the rule change), and neither. On
Kubernetes the first gives no failed request; the other two may fail a few, since the server may
stop before kube-proxy on every node has the endpoint out of its rules, and a pod without a
readiness probe is sent requests as soon as its container starts.

    python -m benchmarks.rollout_bench [--replicas 3] [--out benchmarks/rollout_bench_results.md]
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from benchmarks.output import emit

SETTINGS = (
    ("readiness probe, preStop sleep 4 s", dict(readiness=True, pre_stop_sleep=4)),
    ("readiness probe, no preStop", dict(readiness=True, pre_stop_sleep=0)),
    ("no readiness probe, no preStop", dict(readiness=False, pre_stop_sleep=0)),
)
NODES = 3


def _log(what: str) -> None:
    print(f"[rollout_bench {time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        return "?"


def _kinds(failed: list[str]) -> str:
    """The failures by wget's words (``wget: can't connect to remote host ...: Connection refused``)."""
    counts = collections.Counter(line.rsplit(":", 1)[-1].strip() if ":" in line else line for line in failed)
    return ", ".join(f"{n} {what}" for what, n in counts.most_common()) or "-"


def run(replicas: int) -> list[dict]:
    from harness.services import rollout, web_cluster

    rows = []
    tmp = tempfile.mkdtemp(prefix="rolloutbench-")
    try:
        _log(f"control plane, {NODES} real nodes, {replicas} web pods, a client pod per node")
        with web_cluster(tmp, NODES, replicas) as cluster:
            for label, template in SETTINGS:
                _log(f"{label}: a first rollout to give the pods the setting")
                rollout(cluster, NODES, replicas, **template)
                _log(f"{label}: the measured rollout")
                got = rollout(cluster, NODES, replicas, **template)
                rows.append({"setting": label, "requests": got["requests"], "failed": len(got["failed"]),
                             "kinds": _kinds(got["failed"]), "seconds": got["seconds"]})
                _log(f"{label}: {got['requests']} requests, {len(got['failed'])} failed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def report(rows: list[dict], args) -> str:
    load = os.getloadavg()
    lines = [
        "# Failed requests during a rolling update, from pods on every node (Services on real nodes)", "",
        f"- command: `python -m benchmarks.rollout_bench --replicas {args.replicas}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; git commit: {_commit()}",
        f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average at end (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- {NODES} real nodes (kube-proxy `--min-sync-period 1s`, cluster DNS), a Deployment of "
        f"{args.replicas} busybox httpd pods (maxSurge 1, maxUnavailable 0, grace 10 s; the shell "
        "in front of httpd exits on SIGTERM), a busybox client pod per node running "
        "`wget -qO- http://web/` in a loop (100 ms apart); the measured rollout is the second with "
        "the setting, timed until every old pod is gone",
        "",
        "| setting | requests | failed | failures | rollout s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['requests']} | {r['failed']} | {r['kinds']} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rollout_bench")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    from node import capable

    reason = capable.why_not()
    if reason:
        print(f"rollout_bench needs real nodes: {reason}", file=sys.stderr)
        return 1
    rows = run(args.replicas)
    text = report(rows, args)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
