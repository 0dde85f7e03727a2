"""What the benchmark measures besides the pods' times: CPU seconds of a
process and of the machine, etcd's revision and the writes behind it,
latency percentiles, and the rollout figures drawn from the pods' times."""

from __future__ import annotations

import bisect
import os
import threading
import time
from dataclasses import dataclass

from benchmarks.plane_scale.observers import PodTimes
from benchmarks.plane_scale.processes import Plane
from benchmarks.targets import machine_busy_seconds, machine_cpu_seconds

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (not its children), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def etcd_revision(endpoint: str) -> int:
    import grpc

    from etcdlite.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    with grpc.insecure_channel(endpoint) as ch:
        return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=30).header.revision


def writes_by_resource(endpoint: str, start: int, end: int, timeout: float = 120) -> dict[str, int]:
    """etcd writes (puts and deletes) with revisions in (start, end], by the
    resource in their key (/registry/<resource>/...), read back from etcd's
    history with a watch."""
    import grpc

    from etcdlite.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    counts: dict[str, int] = {}
    if end <= start:
        return counts
    done = threading.Event()

    def requests():
        yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=b"\x00", range_end=b"\x00", start_revision=start + 1))
        done.wait(timeout)

    with grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", 256 << 20)]) as ch:
        stream = rpc_pb2_grpc.WatchStub(ch).Watch(requests(), timeout=timeout)
        try:
            for resp in stream:
                for ev in resp.events:
                    if ev.kv.mod_revision > end:
                        done.set()
                        break
                    parts = ev.kv.key.decode("utf-8", "replace").split("/")
                    resource = parts[2] if len(parts) > 2 and parts[1] == "registry" else "(other keys)"
                    counts[resource] = counts.get(resource, 0) + 1
                    if ev.kv.mod_revision == end:
                        done.set()
                if done.is_set():
                    break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            done.set()
            stream.cancel()
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def latency_summary(values: list[float]) -> dict:
    return {"n": len(values), **{f"p{q}_ms": ms(percentile(values, q)) for q in (50, 90, 99)},
            "max_ms": ms(max(values) if values else None)}


@dataclass
class Snapshot:
    """CPU seconds per process, the machine's busy seconds and the etcd revision at one moment."""
    at: float
    cpu: dict[str, float]
    machine: float
    revision: int


def snapshot(plane: Plane, probe_pid: int | None) -> Snapshot:
    pids = {**plane.pids(), "benchmark (watch)": os.getpid()}
    if probe_pid:
        pids["probe client"] = probe_pid
    cpu = {name: s for name, pid in pids.items() if (s := cpu_seconds(pid)) is not None}
    return Snapshot(time.monotonic(), cpu, machine_busy_seconds(machine_cpu_seconds()),
                    etcd_revision(plane.procs["etcd"].endpoint))


def usage(a: Snapshot, b: Snapshot) -> dict:
    wall = b.at - a.at
    per = {name: round(b.cpu[name] - a.cpu.get(name, 0.0), 2) for name in b.cpu}
    ours = sum(per.values())
    return {"wall_s": round(wall, 2), "cpu_s": per,
            "other_processes_cpu_s": round(max(0.0, b.machine - a.machine - ours), 2),
            "etcd_revisions": b.revision - a.revision}


def rollout_figures(times: list[PodTimes], t0: float, replicas: int) -> dict:
    seen, bound, ready = (sorted(getattr(t, f) - t0 for t in times if getattr(t, f) is not None)
                          for f in ("seen", "bound", "ready"))
    out = {"pods_created_s": round(seen[-1], 2) if len(seen) >= replicas else None,
           "pods_bound_s": round(bound[-1], 2) if len(bound) >= replicas else None,
           "pods_running_ready_s": round(ready[-1], 2) if len(ready) >= replicas else None,
           "first_bound_s": round(bound[0], 2) if bound else None}
    if len(bound) >= 2 and bound[-1] > bound[0]:
        out["scheduler_pods_per_s"] = round((len(bound) - 1) / (bound[-1] - bound[0]), 1)
        window, j, peak = 5.0, 0, 0
        for i in range(len(bound)):
            while bound[i] - bound[j] > window:
                j += 1
            peak = max(peak, i - j + 1)
        out["scheduler_peak_pods_per_s_5s"] = round(peak / min(window, bound[-1] - bound[0]), 1)
    if len(seen) >= 2 and seen[-1] > seen[0]:
        out["pod_creation_per_s"] = round((len(seen) - 1) / (seen[-1] - seen[0]), 1)
    if len(ready) >= 2 and ready[-1] > ready[0]:
        out["pods_ready_per_s"] = round((len(ready) - 1) / (ready[-1] - ready[0]), 1)
    return out


def timeline(times: list[PodTimes], t0: float, until: float, step: float = 1.0) -> list[list]:
    """[seconds since t0, pods created, bound, Running+Ready, marked for deletion, deleted] every ``step`` s."""
    cols = [sorted(getattr(t, f) - t0 for t in times if getattr(t, f) is not None)
            for f in ("seen", "bound", "ready", "terminating", "deleted")]
    out, k = [], 0.0
    while k <= until - t0 + step:
        out.append([round(k, 1), *(bisect.bisect_right(c, k) for c in cols)])
        k += step
    return out
