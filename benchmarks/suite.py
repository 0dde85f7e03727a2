"""`python -m benchmarks`: run every benchmark against every target, write the results.

Targets: etcdlite with 1 and 3 members, the real etcd (3.4) with 1 and 3 members, and
the bare gRPC Put server (benchmarks.bare_server). One target runs at a time; the
load comes from a pool of worker processes (benchmarks.load) on the same 2-core
machine, so generator and servers share the CPUs: every figure is reported with the
generator's CPU use beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import gowatch, report
from benchmarks.load import WorkerPool
from benchmarks.targets import (
    FLAGS,
    TARGETS,
    Target,
    dir_size,
    machine_busy_seconds,
    machine_cpu_seconds,
    proc_cpu_seconds,
    proc_rss,
)
from benchmarks.watch_writer import watch_writer
from harness.procs import ETCD_BIN, ETCDCTL_BIN, etcdctl_env

BENCHMARKS = ["put", "range", "txn", "watch", "lease", "checkperf", "memory"]
PUT_LEVELS = [1, 16, 64, 256]
# targets whose put repetitions take turns with another's (a, b, c, a, b, c, ...), so that
# their ratios are measured under the same conditions: the bare server's with etcdlite 1's
# (the 1-member bar), and etcdlite without syncs with etcdlite with them (what they cost)
PAIRED = {"etcdlite1": ("bare", "etcdlite1_nofsync", "etcdlite1_syncthread"),
          "etcdlite3": ("etcdlite3_nofsync", "etcdlite3_syncthread")}
# what the targets with other flags run: the benchmarks the syncs weigh on
NOFSYNC_PLAN = ("put", "checkperf")
# targets a run has unless --targets names them
NOT_BY_DEFAULT = ("etcdlite1_syncthread", "etcdlite3_syncthread", "etcdlite3_peertls", "bare_sync")

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def pct(values, q: float):
    if not values:
        return None
    s = sorted(values)
    i = min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))
    return s[i]


def lat_summary(values) -> dict:
    """p50/p99/max in milliseconds."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(pct(values, 50) * 1e3, 3),
        "p99_ms": round(pct(values, 99) * 1e3, 3),
        "max_ms": round(max(values) * 1e3, 3),
    }


class Runner:
    def __init__(self, args) -> None:
        self.args = args
        self.quick = args.quick
        self.duration = args.duration or (1.2 if self.quick else 2.0)
        self.reps = args.reps or (1 if self.quick else 3)
        self.nproc = os.cpu_count() or 1
        self.pool = WorkerPool(args.procs)
        self.pool_size = args.procs

    def reset_pool(self) -> None:
        try:
            self.pool.close()
        finally:
            self.pool = WorkerPool(self.pool_size)

    # -- generic load ------------------------------------------------------------

    def client_label(self, op: str, clients: int) -> str:
        n = len(self.split(clients))
        if self.args.client == "h2" and op != "lease_keepalive":
            return f"benchmarks.h2client (lean HTTP/2 gRPC client on asyncio), {n} process(es)"
        return f"benchmarks.load: python grpc.aio, {n} process(es)"

    def split(self, clients: int) -> list[int]:
        n = max(1, min(self.pool_size, clients))
        return [clients // n + (1 if i < clients % n else 0) for i in range(n)]

    def load(self, target: Target, op: str, clients: int, duration: float, **params) -> dict:
        """One measurement: `clients` clients over the worker pool for `duration` s."""
        params.setdefault("client", self.args.client)
        tasks = [dict(op=op, endpoints=target.endpoints, clients=c, duration=duration, **params)
                 for c in self.split(clients)]
        pids = target.pids
        mark = {}

        def at_start(start):  # sample the servers' CPU over the measured window only
            time.sleep(max(0.0, start - time.time()))
            mark["cpu"] = {p: proc_cpu_seconds(p) for p in pids}
            mark["stat"] = machine_cpu_seconds()
            mark["t"] = time.monotonic()
            mark["started"] = start

        results, _ = self.pool.run(tasks, during=at_start)
        wall = time.monotonic() - mark["t"]
        srv_cpu = sum(proc_cpu_seconds(p) - c for p, c in mark["cpu"].items())
        stat = machine_cpu_seconds()
        busy = machine_busy_seconds(stat) - machine_busy_seconds(mark["stat"])
        # what "everything else" may have been: interrupts and softirqs (loopback TCP's
        # packets; the kernel may also charge them to the process they interrupted) and
        # steal (the hypervisor running someone else), machine-wide
        kernel = {kind: (stat.get(kind, 0.0) - mark["stat"].get(kind, 0.0)) / wall if wall else 0
                  for kind in ("irq", "softirq", "steal")}
        lat = [x for r in results for x in r["lat"]]
        errors: dict = {}
        extra: dict = {}
        for r in results:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
            for k, v in r["extra"].items():
                extra[k] = extra.get(k, 0) + v
        run_wall = max(r["wall"] for r in results)
        gen_cpu = sum(r["cpu"] for r in results)
        return {
            "ops": len(lat), "wall": run_wall, "ops_per_s": len(lat) / run_wall if run_wall else 0,
            "started": mark["started"],
            "lat": lat, "errors": errors, "extra": extra,
            "gen_cpu_cores": gen_cpu / run_wall if run_wall else 0,
            "server_cpu_cores": srv_cpu / wall if wall else 0,
            # whatever else ran on the machine meanwhile (other processes, this suite's parent)
            "other_cpu_cores": max(0.0, busy - srv_cpu - gen_cpu * run_wall / wall) / wall if wall else 0,
            "irq_softirq_cores": kernel["irq"] + kernel["softirq"],
            "steal_cores": kernel["steal"],
        }

    def repeated(self, target: Target, op: str, clients: int, **params) -> dict:
        return self.interleaved([target], op, clients, **params)[0]

    def interleaved(self, targets: list[Target], op: str, clients: int, **params) -> list[dict]:
        """`repeated` for several targets, their repetitions taking turns (a, b, a, b, ...): a
        disturbance lasting a few seconds (another process, the hypervisor) lands on each of
        them, not on whichever happened to run then, so their ratio holds still."""
        runs: list[list[dict]] = [[] for _ in targets]
        for _ in range(self.reps):
            for target, done in zip(targets, runs):
                done.append(self.load(target, op, clients, self.duration, **params))
        return [self.summary(r, op, clients) for r in runs]

    def summary(self, runs: list[dict], op: str, clients: int) -> dict:
        """One figure from repeated measurements: medians, latencies over all of them."""
        lat = [x for r in runs for x in r["lat"]]
        errors: dict = {}
        for r in runs:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        out = {
            "clients": clients,
            "ops_per_s": round(statistics.median(r["ops_per_s"] for r in runs), 1),
            "ops_per_s_runs": [round(r["ops_per_s"], 1) for r in runs],
            **lat_summary(lat),
            "errors": sum(errors.values()),
            "error_kinds": errors,
            "gen_cpu_cores": round(statistics.median(r["gen_cpu_cores"] for r in runs), 2),
            "server_cpu_cores": round(statistics.median(r["server_cpu_cores"] for r in runs), 2),
            "other_cpu_cores": round(statistics.median(r["other_cpu_cores"] for r in runs), 2),
            # per repetition, as the medians above can hide one disturbed run
            "other_cpu_cores_runs": [round(r["other_cpu_cores"], 2) for r in runs],
            "irq_softirq_cores_runs": [round(r["irq_softirq_cores"], 2) for r in runs],
            "steal_cores_runs": [round(r["steal_cores"], 2) for r in runs],
            "started_runs": [round(r["started"], 3) for r in runs],  # wall clock (time.time())
            # CPU the server(s) spent per completed operation: unlike ops/s, it
            # hardly moves when other processes take CPU from the servers
            "server_cpu_us_per_op": round(statistics.median(
                r["server_cpu_cores"] * 1e6 / r["ops_per_s"] for r in runs if r["ops_per_s"]), 0)
            if any(r["ops_per_s"] for r in runs) else None,
            "client": self.client_label(op, clients),
        }
        out["_runs"] = runs
        return out

    def fill(self, target: Target, prefix: bytes, count: int, value_size: int, clients: int = 64) -> dict:
        """Put keys prefix+0..count-1 once each (value_size bytes), over the pool."""
        shares = self.split(clients)
        n = len(shares)
        bounds = [count * i // n for i in range(n + 1)]
        tasks = [dict(op="put_seq", endpoints=target.endpoints, clients=shares[i], duration=3600,
                      lo=bounds[i], hi=bounds[i + 1], prefix=prefix, value_size=value_size,
                      client=self.args.client)
                 for i in range(n)]
        t0 = time.monotonic()
        results = self.pool.run(tasks, timeout=1800)
        wall = time.monotonic() - t0
        done = sum(len(r["lat"]) for r in results)
        errors = sum(sum(r["errors"].values()) for r in results)
        return {"keys": done, "errors": errors, "wall_s": round(wall, 1),
                "ops_per_s": round(done / wall, 1) if wall else None}

    # -- benchmarks --------------------------------------------------------------

    def bench_put(self, target: Target) -> dict:
        return self.bench_puts([target])[0]

    def bench_puts(self, targets: list[Target]) -> list[dict]:
        """Puts at each of PUT_LEVELS, one result per target, their repetitions taking turns
        (see `interleaved`)."""
        out: list[dict] = [{} for _ in targets]
        for c in PUT_LEVELS:
            before = [t.status() for t in targets]
            log(f"  {' and '.join(t.name for t in targets)}: put, {c} clients")
            rs = self.interleaved(targets, "put", c, prefix=b"put/", keyspace=100_000, value_size=256)
            for t, r, b, o in zip(targets, rs, before, out):
                r.pop("_runs")
                after = t.status()
                r["leader_changes"] = leader_changes(b, after)
                r["status_before"], r["status_after"] = b, after
                o[str(c)] = r
        return out

    def bench_range(self, target: Target) -> dict:
        log(f"  {target.name}: range (filling 1,000 keys)")
        fill = self.fill(target, b"rng/", 1000, 256)
        out = {"fill": fill}
        for op, name in (("range_l", "linearizable"), ("range_s", "serializable")):
            log(f"  {target.name}: range {name}, 64 clients")
            r = self.repeated(target, op, 64, prefix=b"rng/", keyspace=1000)
            missing = sum(x["extra"].get("missing", 0) for x in r.pop("_runs"))
            r["missing_keys"] = missing
            out[name] = r
        return out

    def bench_txn(self, target: Target) -> dict:
        clients, nkeys = 32, 4
        log(f"  {target.name}: txn CAS, {clients} clients on {nkeys} keys")
        runs = []
        for rep in range(self.reps):
            prefix = b"cas%d-%d/" % (target.starts, rep)
            r = self.load(target, "txn_cas", clients, self.duration, prefix=prefix, cas_keys=nkeys)
            # check: the keys' final values add up to the acknowledged successes
            total = 0
            import grpc

            from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
            from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
            with grpc.insecure_channel(target.endpoints[0]) as ch:
                rr = rpc.KVStub(ch).Range(pb.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"), timeout=10)
                total = sum(int(kv.value) for kv in rr.kvs)
            r["final_sum"] = total
            runs.append(r)
        lat = [x for r in runs for x in r["lat"]]
        succ = [r["extra"].get("successes", 0) / r["wall"] for r in runs]
        att = [r["extra"].get("attempts", 0) / r["wall"] for r in runs]
        return {
            "clients": clients, "keys": nkeys,
            "successes_per_s": round(statistics.median(succ), 1),
            "attempts_per_s": round(statistics.median(att), 1),
            "success_ratio": round(sum(r["extra"].get("successes", 0) for r in runs)
                                   / max(1, sum(r["extra"].get("attempts", 0) for r in runs)), 3),
            "lost_updates": sum(r["extra"].get("successes", 0) - r["final_sum"] for r in runs),
            **lat_summary(lat),
            "errors": sum(sum(r["errors"].values()) for r in runs),
            "error_kinds": merge_counts(r["errors"] for r in runs),
            "gen_cpu_cores": round(statistics.median(r["gen_cpu_cores"] for r in runs), 2),
            "client": self.client_label("txn_cas", clients),
        }

    def watch_receiver_label(self, streams: int) -> str:
        n = len(self.split(streams))
        conns = sum(max(1, min(s, 8)) for s in self.split(streams))
        if self.args.client == "h2":
            return (f"benchmarks.h2watch (lean HTTP/2 gRPC watch streams on asyncio, upb parsing): "
                    f"{streams} stream(s) over {conns} connection(s) in {n} process(es); "
                    f"writer: python grpc (sync) in the parent")
        return (f"benchmarks.load: python grpc.aio watch streams over {conns} channel(s) in {n} process(es); "
                f"writer: python grpc (sync) in the parent")

    def bench_watch(self, target: Target) -> dict:
        out = {}
        # modest: 1,000 watchers make 1,000 events per put, and a grpc.aio receiver
        # process decodes only a few thousand watch responses per second (the lean
        # one, --client h2, some tens of thousands); the Go rows use the same rate
        rate = 2.0
        dur = 3.0 if self.quick else 8.0
        for name, streams, per in (("1x1000", 1, 1000), ("100x10", 100, 10)):
            log(f"  {target.name}: watch, {streams} stream(s) x {per} watchers, {rate:g} puts/s for {dur:g}s")
            key = b"watch/%s/%d" % (name.encode(), target.starts)
            # watchers on the other members than the writer's where there are several
            eps = target.endpoints[1:] + target.endpoints[:1] if len(target.endpoints) > 1 else target.endpoints
            split = self.split(streams)
            n_puts = int(rate * dur)
            tasks = [dict(op="watch", endpoints=eps, streams=s, watchers_per_stream=per, key=key,
                          duration=dur + 10.0, expected=n_puts * s * per, client=self.args.client)
                     for s in split]
            results, (acks, put_lat) = self.pool.run(
                tasks, during=lambda start: watch_writer(target.endpoints[0], key, start, rate, dur))
            send_lat, ack_lat = [], []
            errors = merge_counts(r["errors"] for r in results)
            for r in results:
                for rev, sent, recv in zip(r["revs"], r["sent"], r["recv"]):
                    send_lat.append(recv - sent)
                    if rev in acks:
                        ack_lat.append(recv - acks[rev])
            expected = len(acks) * streams * per
            s = lat_summary(send_lat)
            a = lat_summary(ack_lat)
            out[name] = {
                "streams": streams, "watchers": streams * per, "puts": len(acks),
                "events_expected": expected, "events_received": len(send_lat),
                **s,
                "after_ack_p50_ms": a["p50_ms"], "after_ack_p99_ms": a["p99_ms"],
                "put_p50_ms": lat_summary(put_lat)["p50_ms"],
                "errors": sum(errors.values()), "error_kinds": errors,
                # per receiving process: near 1.0 means the receiver, not the server, set the pace
                "receiver_cpu_cores_max": round(max(r["cpu"] / r["wall"] for r in results), 2),
                # the same per put: the events of a put come in a burst (at 2 puts/s the average
                # above hides it); a receiver spending a good part of the bar per put delays the
                # last events of each burst by that much
                "receiver_cpu_ms_per_put_max": round(max(r["cpu"] for r in results) * 1e3 / len(acks), 1)
                if acks else None,
                "receiver": self.args.client,  # h2 = benchmarks.h2watch, grpc = grpc.aio
                "client": self.watch_receiver_label(streams),
            }
        out.update(self.go_watch(target, rate, dur))
        return out

    def go_watch(self, target: Target, rate: float, dur: float) -> dict:
        """The same two shapes with the Go client as receiver (benchmarks.gowatch)."""
        out = {}
        eps = target.endpoints[1:] + target.endpoints[:1] if len(target.endpoints) > 1 else target.endpoints
        for name, streams, per in (("1x1000", 1, 1000), ("100x10", 100, 10)):
            log(f"  {target.name}: watch, Go etcdctl, {streams} stream(s) x {per} watchers, "
                f"{rate:g} puts/s for {dur:g}s")
            key = b"gowatch/%s/%d" % (name.encode(), target.starts)
            r = gowatch.run(ETCDCTL_BIN, eps, target.endpoints[0], streams, per, key, rate, dur)
            s, a = lat_summary(r["send_lat"]), lat_summary(r["ack_lat"])
            out["go_" + name] = {
                "streams": streams, "watchers": streams * per, "puts": r["puts"],
                "events_expected": r["expected"], "events_received": r["received"],
                **s,
                "after_ack_p50_ms": a["p50_ms"], "after_ack_p99_ms": a["p99_ms"],
                "put_p50_ms": lat_summary(r["put_lat"])["p50_ms"],
                "receiver_cpu_cores": r["receiver_cpu_cores"],
                "client": f"Go etcdctl 3.4 `watch -i -w json`: {streams} process(es), one stream each; "
                          f"writer: python grpc (sync) in the parent",
            }
        return out

    def bench_lease(self, target: Target) -> dict:
        out = {}
        for op, name in (("lease_grant", "grant"), ("lease_keepalive", "keepalive")):
            log(f"  {target.name}: lease {name}, 64 clients")
            r = self.repeated(target, op, 64)
            r.pop("_runs")
            out[name] = r
        return out

    def bench_checkperf(self, target: Target) -> dict:
        out = {}
        for load in ("m", "l"):
            log(f"  {target.name}: etcdctl check perf --load={load} (60 s)")
            out[load] = check_perf(target.endpoints, load)
        return out

    def bench_memory(self, target: Target) -> dict:
        """On a fresh instance: RSS delta and data dir size after N keys of 1 KiB."""
        n = self.args.memory_keys or (10_000 if self.quick else 100_000)
        fresh = Target(target.name, target.workdir)
        fresh.starts = 100 + target.starts
        log(f"  {target.name}: memory, fresh instance, {n:,} keys of 1 KiB")
        fresh.start()
        try:
            time.sleep(1.0)
            rss0 = [proc_rss(p) for p in fresh.pids]
            disk0 = [dir_size(d) for d in fresh.data_dirs]
            fill = self.fill(fresh, b"mem/", n, 1024)
            time.sleep(2.0)
            rss1 = [proc_rss(p) for p in fresh.pids]
            disk1 = [dir_size(d) for d in fresh.data_dirs]
        finally:
            fresh.stop()
        m = len(rss0)
        d_rss = [b.get("VmRSS", 0) - a.get("VmRSS", 0) for a, b in zip(rss0, rss1)]
        d_anon = [b.get("RssAnon", 0) - a.get("RssAnon", 0) for a, b in zip(rss0, rss1)]
        return {
            "keys": n, "value_bytes": 1024, "key_bytes": 16, "fill": fill,
            "rss_delta_per_key_bytes": round(sum(d_rss) / m / n, 1),
            "rss_anon_delta_per_key_bytes": round(sum(d_anon) / m / n, 1),
            "rss_after_mb": round(sum(r.get("VmRSS", 0) for r in rss1) / m / 2**20, 1),
            "data_dir_mb": round(sum(disk1) / m / 2**20, 1),
            "data_dir_before_mb": round(sum(disk0) / m / 2**20, 1),
            "per_member": {"rss_before": rss0, "rss_after": rss1, "data_dir_bytes": disk1},
            "client": f"{self.client_label('put', 64)} (fill); /proc/PID/status VmRSS; du of data dirs",
        }


def put_with_pair(runner: Runner, target: Target, names: list[str], results: dict, workdir: Path,
                  current: list[Target]) -> dict:
    """`target`'s put benchmark with the repetitions of the targets `names` taking turns
    with its own (Runner.interleaved): each one's result goes into `results` under its
    name, marked paired_with. One that cannot start is left out (and tried again on its
    own turn)."""
    others = []
    try:
        for name in names:
            other = Target(name, workdir)
            # its own data dirs: its turn (check perf) starts it again from `starts` 0, and a
            # member must not start on another's data dir (other ports: no leader, ever)
            other.starts = 200
            log(f"== {name}: starting, beside {target.name}")
            current.append(other)
            try:
                other.start()
            except Exception as e:  # noqa: BLE001
                log(f"== {name}: could not start: {e}")
                current.remove(other)
                continue
            others.append(other)
        if not others:
            return runner.bench_put(target)
        mine, *theirs = runner.bench_puts([target, *others])
        for other, put in zip(others, theirs):
            res = results.setdefault(other.name, {"label": TARGETS[other.name][2]})
            res["endpoints"] = other.endpoints
            res["argv"] = other.argv
            res["put"] = put
            res["paired_with"] = target.name
            res["status_end"] = other.status()
    finally:
        for other in others:
            other.stop()
            current.remove(other)
    return mine


def merge_counts(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def leader_changes(before: list[dict], after: list[dict]) -> dict:
    terms0 = {s["term"] for s in before if s["term"] is not None}
    terms1 = {s["term"] for s in after if s["term"] is not None}
    leaders0 = {s["leader"] for s in before if s["leader"]}
    leaders1 = {s["leader"] for s in after if s["leader"]}
    term_delta = (max(terms1) - max(terms0)) if terms0 and terms1 else None
    return {
        "term_delta": term_delta,
        "leader_changed": leaders0 != leaders1,
        "unreachable_after": sum(1 for s in after if s["term"] is None),
    }


CHECK_RE = {
    "writes_per_s": re.compile(r"(?:Throughput is|Throughput too low:) (\d+) writes/s"),
    "slowest_s": re.compile(r"Slowest request took (?:too long: )?([\d.]+)s"),
    "stddev_s": re.compile(r"Stddev (?:is|too high:) ([\d.]+)s"),
}


def check_perf(endpoints: list[str], load: str) -> dict:
    argv = [ETCDCTL_BIN, f"--endpoints={','.join(endpoints)}", "check", "perf", f"--load={load}"]
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=240, env=etcdctl_env(),
                           stdin=subprocess.DEVNULL)
        out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
        rc = p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace") + "\n[timed out after 240 s]"
        rc = None
    # the progress bar redraws with \r: keep only the result lines
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", out) if ln.strip()]
    result_lines = [ln for ln in lines if re.match(r"(PASS|FAIL|Slowest|Stddev|Error|error)", ln)]
    r = {"load": load, "rc": rc, "wall_s": round(time.monotonic() - t0, 1),
         "verdict": "PASS" if rc == 0 and "PASS" in lines[-1:] else "FAIL",
         "lines": result_lines[-20:],
         "client": "etcdctl 3.4 check perf (Go clientv3)"}
    for k, rx in CHECK_RE.items():
        m = rx.search(out)
        r[k] = float(m.group(1)) if m else None
    errs = re.findall(r"ERROR\((.*?)\) -> (\d+)", out)
    r["errors"] = sum(int(n) for _, n in errs)
    r["error_kinds"] = {k[:120]: int(n) for k, n in errs}
    if r["writes_per_s"] is None:
        r["verdict"] = "error: " + (lines[-1][:150] if lines else f"rc={rc}, no output")
    return r


# ---------------------------------------------------------------------------


def machine_info(workdir: Path) -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def cmd(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""

    import grpc

    try:
        from importlib.metadata import version
        pysyncobj_v = version("pysyncobj")
    except Exception:  # noqa: BLE001
        pysyncobj_v = "?"
    repo = Path(__file__).resolve().parents[1]
    commit = cmd("git", "-C", str(repo), "rev-parse", "--short", "HEAD")
    dirty = cmd("git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "etcdlite")
    fs = cmd("df", "--output=fstype", str(workdir)).splitlines()[-1:]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_mb": int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "pysyncobj": pysyncobj_v,
        "etcd": cmd(ETCD_BIN, "--version").splitlines()[0] if cmd(ETCD_BIN, "--version") else "?",
        "etcdctl": cmd(ETCDCTL_BIN, "version").splitlines()[0] if cmd(ETCDCTL_BIN, "version") else "?",
        "etcdlite_commit": commit + (" (etcdlite/ modified)" if dirty else ""),
        "data_dir_fs": fs[0] if fs else "?",
    }


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~2 minute smoke run (short runs, no check perf)")
    ap.add_argument("--only", default="", help=f"comma-separated benchmarks: {','.join(BENCHMARKS)},bare")
    ap.add_argument("--targets", default=",".join(t for t in TARGETS if t not in NOT_BY_DEFAULT),
                    help=f"comma-separated: {','.join(TARGETS)}")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent), help="output dir (default benchmarks/)")
    ap.add_argument("--duration", type=float, default=0, help="seconds per measurement (default 2, quick 1.2)")
    ap.add_argument("--reps", type=int, default=0, help="repetitions per measurement, median reported (default 3, quick 1)")
    ap.add_argument("--client", choices=["h2", "grpc"], default="h2",
                    help="client of the unary benchmarks (put, range, txn, lease grant) and receiver of "
                         "the Python watch rows: h2 = benchmarks/h2client.py and benchmarks/h2watch.py "
                         "(default; grpc.aio spends more CPU per call than the servers it measures), "
                         "grpc = grpc.aio (lease keep-alive streams always use grpc.aio)")
    ap.add_argument("--procs", type=int, default=max(2, os.cpu_count() or 2), help="load worker processes")
    ap.add_argument("--memory-keys", type=int, default=0, help="keys for the memory benchmark (default 100000, quick 10000)")
    ap.add_argument("--render-only", action="store_true",
                    help="only rewrite results.md from the results.json in --out")
    ap.add_argument("--workdir", default=None, help="parent of the temp data dirs (default: system temp)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render_only:
        data = json.loads((Path(args.out) / "results.json").read_text())
        (Path(args.out) / "results.md").write_text(report.render(data))
        return 0
    only = [b for b in args.only.split(",") if b]
    unknown = [b for b in only if b not in BENCHMARKS + ["bare"]]
    if unknown:
        print(f"unknown benchmark(s): {unknown}; known: {BENCHMARKS + ['bare']}", file=sys.stderr)
        return 2
    benches = [b for b in BENCHMARKS if not only or b in only]
    if args.quick and "checkperf" in benches and "checkperf" not in only:
        benches.remove("checkperf")  # 2 x 60 s per target: not in a smoke run
    targets = [t for t in args.targets.split(",") if t]
    if only and "bare" not in only and "put" not in only and "checkperf" not in only:
        targets = [t for t in targets if TARGETS[t][0] != "bare"]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="etcdlite-bench-", dir=args.workdir))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {"meta": machine_info(workdir), "command": command.strip(),
               "settings": {}, "targets": {}}
    runner = None
    current: list[Target] = []
    status = 0
    try:
        runner = Runner(args)
        results["settings"] = {
            "duration_s": runner.duration, "reps": runner.reps, "watch_rate_per_s": 2.0, "load_processes": args.procs,
            "put_levels": PUT_LEVELS, "put_key_bytes": 16, "put_value_bytes": 256,
            "put_keyspace": 100_000, "benchmarks": benches, "quick": args.quick, "client": args.client,
        }
        log(f"benchmarks {benches} on targets {targets}; {runner.reps} x {runner.duration:g}s per "
            f"measurement, {args.procs} load processes; data under {workdir}")
        for name in targets:
            res = results["targets"].setdefault(name, {"label": TARGETS[name][2]})
            # the bare server also takes etcdctl check perf (its Range answers the check's first
            # Get): the ceiling of grpclite under 500 connections, beside etcdlite 1's figure
            plan = [b for b in benches if b in ("put", "checkperf")] if TARGETS[name][0] == "bare" else benches
            if name in FLAGS:
                plan = [b for b in plan if b in NOFSYNC_PLAN]
            if res.get("paired_with"):
                log(f"== {name}: put measured beside {res['paired_with']} (above)")
                plan = [b for b in plan if b != "put"]
            if not plan:
                continue
            target = Target(name, workdir)
            t_start = time.monotonic()
            log(f"== {name}: starting")
            try:
                current.append(target)
                target.start()
                res["endpoints"] = target.endpoints
                res["argv"] = target.argv
            except Exception as e:  # noqa: BLE001
                log(f"== {name}: could not start: {e}")
                res["start_error"] = str(e).splitlines()[0][:200]
                current.remove(target)
                continue
            for b in plan:
                if b == "put" and only and "put" not in only and "bare" not in only:
                    continue
                if b == "memory":
                    continue  # after the target is stopped: it runs on a fresh instance
                tb = time.monotonic()
                try:
                    pairs = [p for p in PAIRED.get(name, ()) if p in targets
                             and "put" not in results["targets"].get(p, {})]
                    if b == "put" and pairs:
                        res[b] = put_with_pair(runner, target, pairs, results["targets"], workdir, current)
                    else:
                        res[b] = getattr(runner, f"bench_{b}")(target)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001
                    msg = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
                    log(f"  {name}: {b} failed: {msg}")
                    res[b] = {"error": msg}
                    runner.reset_pool()
                log(f"  {name}: {b} done in {time.monotonic() - tb:.0f}s")
            res["status_end"] = target.status()
            target.stop()
            current.remove(target)
            if "memory" in plan and TARGETS[name][0] != "bare":
                tb = time.monotonic()
                try:
                    res["memory"] = runner.bench_memory(target)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001
                    msg = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
                    log(f"  {name}: memory failed: {msg}")
                    res["memory"] = {"error": msg}
                    runner.reset_pool()
                log(f"  {name}: memory done in {time.monotonic() - tb:.0f}s")
            log(f"== {name}: done in {time.monotonic() - t_start:.0f}s")
    except KeyboardInterrupt:
        log("interrupted: stopping servers, writing partial results")
        results["interrupted"] = True
        status = 130
    finally:
        for t in current:
            try:
                t.stop()
            except Exception:  # noqa: BLE001
                pass
        if runner is not None:
            runner.pool.close()
        shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - T0, 1)
    try:  # etcdlite/ changed under a long run (another commit landed): say so
        end = machine_info(Path(tempfile.gettempdir()))["etcdlite_commit"]
        start = results["meta"].get("etcdlite_commit")
        if end != start:
            results.setdefault("notes", []).append(
                f"the repository moved from {start} to {end} during the run: members started after "
                "that ran the newer etcdlite/ if it changed (`git diff --stat` the two)")
    except Exception:  # noqa: BLE001
        pass
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out_dir / "results.md").write_text(report.render(results))
    log(f"wrote {out_dir / 'results.md'} and {out_dir / 'results.json'} ({results['elapsed_s']:.0f}s)")
    return status
