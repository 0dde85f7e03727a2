"""Claim -> Bound latency: etcdlite, the apiserver and the controller-manager (PV binder
and directory provisioner over a storage area in a temporary directory) as processes on
this machine; claims are created one after another at RATE per second and a watch on
claims times each from its create call to the first event showing it Bound.

1. static: COUNT PersistentVolumes made beforehand (no class), COUNT claims without a
   class bind to them at once (the PV controller's matching and two writes per side);
2. dynamic: COUNT claims of an Immediate class served by the directory provisioner (the
   claim is annotated, a directory and a PersistentVolume made, then bound).

    python -m benchmarks.pv_binding [--count 100] [--rate 10] [--out benchmarks/pv_binding_results.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from apiserver.client import Client
from apiserver.pb import core_pb2, storage_pb2
from controllers.provisioner import SHARED_PROVISIONER
from harness.plane import start_apiserver, start_component
from harness.procs import Registry

NS = "default"


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _claim(name: str, cls: str) -> core_pb2.PersistentVolumeClaim:
    c = core_pb2.PersistentVolumeClaim()
    c.metadata.name, c.metadata.namespace = name, NS
    c.spec.access_modes.append("ReadWriteOnce")
    c.spec.resources.requests["storage"] = "1Mi"
    c.spec.storage_class_name = cls
    return c


def _volume(name: str, base: str) -> core_pb2.PersistentVolume:
    v = core_pb2.PersistentVolume()
    v.metadata.name = name
    v.spec.capacity["storage"] = "1Mi"
    v.spec.access_modes.append("ReadWriteOnce")
    v.spec.host_path.path = os.path.join(base, name)
    return v


def _wait_available(client: Client, count: int, timeout: float = 60.0) -> None:
    """Until the PV controller has seen every volume (it marks them Available)."""
    deadline = time.monotonic() + timeout
    while sum(v.status.phase == "Available" for v in client.list("persistentvolumes").items) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {count} volumes were not all Available within {timeout} s")
        time.sleep(0.2)


def measure(client: Client, prefix: str, cls: str, count: int, rate: float, timeout: float = 120.0) -> dict:
    """Creates ``count`` claims at ``rate``/s; returns their create -> Bound latencies' summary."""
    created: dict[str, float] = {}
    bound: dict[str, float] = {}
    done = threading.Event()
    watch = client.watch("persistentvolumeclaims", NS)

    def follow():
        for ev in watch:
            name = ev.object.metadata.name
            if name.startswith(prefix) and ev.object.status.phase == "Bound" and name not in bound:
                bound[name] = time.monotonic()
                if len(bound) == count:
                    done.set()
                    return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    start = time.monotonic()
    for i in range(count):
        due = start + i / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        name = f"{prefix}{i}"
        created[name] = time.monotonic()
        client.create(_claim(name, cls))
    done.wait(timeout)
    watch.stop()
    lat = [bound[n] - created[n] for n in created if n in bound]
    return {"claims": count, "bound": len(lat), "p50 (s)": statistics.median(lat) if lat else float("nan"),
            "p90 (s)": _pct(lat, 0.9) if lat else float("nan"), "p99 (s)": _pct(lat, 0.99) if lat else float("nan"),
            "max (s)": max(lat) if lat else float("nan")}


def report(args, results: dict[str, dict]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = ["# PersistentVolumeClaim -> Bound latency", "",
             f"- command: `python -m benchmarks.pv_binding --count {args.count} --rate {args.rate}`",
             f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; git commit: {commit}",
             f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, Python "
             f"{platform.python_version()}; load average at end (1/5/15 min): {load}",
             "- what: create call -> first watch event with status.phase Bound; one controller-manager "
             "process (binder: one worker per queue; provisioner: two workers)", ""]
    for title, res in results.items():
        lines += [f"## {title}", "", "| what | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in res.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10.0, help="claims created per second")
    ap.add_argument("--out", default="benchmarks/pv_binding_results.md")
    args = ap.parse_args(argv)
    reg = Registry()
    with tempfile.TemporaryDirectory(prefix="pvbench-") as tmp:
        try:
            etcd = reg.start_etcdlite(Path(tmp), name="etcd")
            api = start_apiserver(Path(tmp), etcd.url, registry=reg)
            start_component(Path(tmp), "cm", "controllers.manager", api.endpoint, reg, log_level="warning",
                            storage_dir=os.path.join(tmp, "storage"))
            with Client(api.endpoint, timeout=30) as client:
                for i in range(args.count):
                    client.create(_volume(f"static-{i}", os.path.join(tmp, "static")))
                cls = storage_pb2.StorageClass(provisioner=SHARED_PROVISIONER, volume_binding_mode="Immediate")
                cls.metadata.name = "bench-immediate"
                client.create(cls)
                _wait_available(client, args.count)
                results = {
                    f"static: {args.count} claims without a class, {args.count} free volumes":
                        measure(client, "static-claim-", "", args.count, args.rate),
                    f"dynamic: {args.count} claims of an Immediate class (directory provisioner)":
                        measure(client, "dynamic-claim-", "bench-immediate", args.count, args.rate),
                }
        finally:
            reg.cleanup()
    text = report(args, results)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
