"""`python -m benchmarks.plane_scale`: the whole control plane at scale.

Starts, each its own process on free 127.0.0.1 ports with its data and log in
a temp dir (removed on exit, also on Ctrl-C): one etcdlite member, the
apiserver, the controller-manager, the scheduler and N simulated nodes. Once
the N nodes are Ready it creates a Deployment of R replicas and measures the
time to all pods created, bound, Running and Ready, and to the Deployment
reporting all R available; the scheduler's pods/s; the latency of a probe
client's Get/List/Create/Update/Delete calls (its own process, so this one's
GIL does not inflate them) at idle, during the rollout, at steady state and
during the scale-down; the CPU seconds of every process and the etcd
revisions written; then the same for a scale-down to 0.

Times come from a pod watch in this process (the moment an event arrives), so
a figure includes the watch's delivery delay, as a user would see it.

    python -m benchmarks.plane_scale                  # 100 nodes, 3,000 replicas
    python -m benchmarks.plane_scale --quick          # 20 nodes, 300 replicas
    python -m benchmarks.plane_scale --nodes 3 --replicas 12 --out /tmp/x

Modules: ``processes`` (the plane's processes, py-spy), ``observers`` (the
probe client's process and the pod watch), ``measure`` (CPU, etcd revisions
and writes, percentiles, rollout figures), ``bench`` (the phases, what is
stuck when nothing moves, the command line), ``report`` (plane_results.md).
"""

from __future__ import annotations

import sys
import time

NAMESPACE, PROBE_NAMESPACE, APP = "bench", "bench-probe", "bench"
PHASES = ("idle", "rollout", "steady", "scale-down")
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)
