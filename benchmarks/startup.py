"""Start-up time, memory and data directory of one member holding N keys, etcdlite
beside etcd 3.4.

    python -m benchmarks.startup [--keys 100000,1000000] [--targets etcdlite,etcd]
                                 [--restarts 2] [--value-bytes 256] [--out DIR]

For each key count, each target runs on a fresh data directory: the keys are put
(Txns of 100 puts, 8 in flight: a million single puts would take most of an hour on
this machine), the member is stopped (SIGTERM) and started again `--restarts` times.
Per start it records the time from launching the process to the first answered
linearizable Range of one key, then to a Range counting every key (both poll every
20 ms),
VmRSS and RssAnon once it answers and 2 s later, and the data directory (du) with its
largest files. After the fill the member runs until its data directory settles (no
snapshot being written, its size steady for 3 s), then is stopped. The targets are
filled one after the other, then their restarts
alternate (etcdlite, etcd, etcdlite, ...), so that the machine's load (shared) lands on
both; the load average is recorded with every start.

Writes startup_results.md and startup_results.json in --out (default benchmarks/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from benchmarks.targets import dir_size, proc_rss
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from harness.procs import Registry

PUTS_PER_TXN = 100
IN_FLIGHT = 8
POLL = 0.02
PREFIX = b"startup/"


def key(i: int) -> bytes:
    return PREFIX + b"%08d" % i


def fill(endpoint: str, n: int, value_bytes: int) -> float:
    """Put keys 0..n-1 (random values: compressible ones would flatter snapshots);
    the seconds it took."""
    t0 = time.monotonic()
    with grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        kv = rpc.KVStub(ch)

        def txn(start: int) -> None:
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=key(i), value=os.urandom(value_bytes)))
                   for i in range(start, min(n, start + PUTS_PER_TXN))]
            for attempt in range(5):
                try:
                    kv.Txn(pb.TxnRequest(success=ops), timeout=60)
                    return
                except grpc.RpcError as err:
                    if attempt == 4 or err.code() not in (grpc.StatusCode.UNAVAILABLE,
                                                          grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    time.sleep(0.5)

        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            list(pool.map(txn, range(0, n, PUTS_PER_TXN)))
    return time.monotonic() - t0


def count(kv, timeout: float = 5) -> int:
    return kv.Range(pb.RangeRequest(key=PREFIX, range_end=PREFIX[:-1] + b"0", count_only=True),
                    timeout=timeout).count


def timed_start(member, n: int, deadline_s: float = 900) -> dict:
    """Launch the stopped member; seconds to its first answered Range and to one that
    counts all n keys, and its memory then and 2 s later."""
    t0 = time.monotonic()
    member.launch()
    deadline = t0 + deadline_s
    first = counted = None
    with grpc.insecure_channel(member.endpoint) as ch:
        kv = rpc.KVStub(ch)
        while counted is None:
            if member.proc.poll() is not None:
                raise RuntimeError(f"{member.kind} exited during start-up:\n{member.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{member.kind} not serving {n} keys after {deadline_s}s")
            try:
                if first is None:  # a cheap read first: counting a million keys takes seconds
                    kv.Range(pb.RangeRequest(key=key(0)), timeout=1)
                    first = time.monotonic() - t0
                got = count(kv, timeout=120)
            except grpc.RpcError:
                time.sleep(POLL)
                continue
            if got >= n:
                counted = time.monotonic() - t0
            else:
                time.sleep(POLL)
    rss = proc_rss(member.pid)
    time.sleep(2.0)
    rss2 = proc_rss(member.pid)
    return {"first_answer_s": round(first, 3), "all_keys_s": round(counted, 3),
            "rss_mb": _mb(rss.get("VmRSS")), "rss_anon_mb": _mb(rss.get("RssAnon")),
            "rss_2s_mb": _mb(rss2.get("VmRSS")), "rss_anon_2s_mb": _mb(rss2.get("RssAnon")),
            "loadavg": os.getloadavg()[0]}


def _mb(b) -> float | None:
    return None if b is None else round(b / 2**20, 1)


def largest_files(path: Path, k: int = 4) -> list[tuple[str, float]]:
    files = []
    for root, _, names in os.walk(path):
        for name in names:
            p = Path(root) / name
            try:
                files.append((str(p.relative_to(path)), p.stat().st_blocks * 512))
            except OSError:
                pass
    files.sort(key=lambda f: -f[1])
    return [(name, _mb(size)) for name, size in files[:k]]


def settle(data_dir: Path, limit: float = 900) -> float:
    """Wait until the member's data directory holds no file being written (etcdlite's
    snapshot child writes raft.snapshot.tmp) and its size held for 3 s: a restart is
    measured from the state the member keeps, not from the middle of a burst of writes
    that outran its snapshots. The seconds it took."""
    t0 = time.monotonic()
    last, same = -1, 0
    while time.monotonic() - t0 < limit:
        busy = any(p.name.endswith(".tmp") or p.name.endswith(".trim") for p in data_dir.iterdir())
        size = dir_size(data_dir)
        same = same + 1 if size == last and not busy else 0
        if same >= 3:
            break
        last = size
        time.sleep(1.0)
    return time.monotonic() - t0


def start(reg: Registry, kind: str, tmp: Path):
    if kind == "etcdlite":
        return reg.start_etcdlite(tmp, name="s", log_level="warn", ready_timeout=120)
    # etcd's default backend quota (2 GiB) holds a million keys of 256 bytes
    return reg.start_real_etcd(tmp, name="s", ready_timeout=120)


def run(keys: list[int], kinds: list[str], restarts: int, value_bytes: int, workdir: Path) -> dict:
    out: dict = {}
    for n in keys:
        reg = Registry()
        members = {}
        try:
            row = out.setdefault(str(n), {})
            for kind in kinds:
                m = members[kind] = start(reg, kind, workdir / f"{kind}-{n}")
                print(f"[{n:,} keys] {kind}: filling", file=sys.stderr, flush=True)
                fill_s = fill(m.endpoint, n, value_bytes)
                settle_s = settle(m.data_dir)
                rss = proc_rss(m.pid)
                m.terminate(timeout=120)
                row[kind] = {"fill_s": round(fill_s, 1), "fill_puts_per_s": round(n / fill_s),
                             "settle_s": round(settle_s, 1),
                             "rss_after_fill_mb": _mb(rss.get("VmRSS")),
                             "rss_anon_after_fill_mb": _mb(rss.get("RssAnon")),
                             "data_dir_mb": _mb(dir_size(m.data_dir)),
                             "largest_files": largest_files(m.data_dir), "starts": []}
            for r in range(restarts):
                for kind in kinds:
                    m = members[kind]
                    print(f"[{n:,} keys] {kind}: start {r + 1}", file=sys.stderr, flush=True)
                    s = timed_start(m, n)
                    s["settle_s"] = round(settle(m.data_dir), 1)
                    m.terminate(timeout=120)
                    s["data_dir_mb"] = _mb(dir_size(m.data_dir))
                    row[kind]["starts"].append(s)
                    print(f"   {s}", file=sys.stderr, flush=True)
            for kind in kinds:
                res = row[kind]
                res["largest_files_end"] = largest_files(members[kind].data_dir)
                for f in ("first_answer_s", "all_keys_s", "rss_2s_mb", "rss_anon_2s_mb"):
                    res[f + "_median"] = statistics.median(s[f] for s in res["starts"])
        finally:
            reg.cleanup()
    return out


def render(data: dict) -> str:
    meta = data["meta"]
    kinds = meta["targets"]
    L = ["# Start-up time, memory and data directory at N keys: etcdlite beside etcd 3.4", "",
         f"- date: {meta['date']}; command: `{meta['command']}`; etcdlite at {meta['commit']}",
         f"- one member each, {meta['value_bytes']}-byte random values, 16-byte keys, put in Txns of "
         f"{PUTS_PER_TXN} ({IN_FLIGHT} in flight); default settings (snapshot count 100,000 for both)",
         "- start-up: from launching the process to the first answered linearizable Range, and to one "
         "that counts every key; medians of the restarts (each restart's figures in the JSON). "
         "RSS 2 s after it answers: VmRSS (etcd's includes the pages of its bbolt file it has mapped) "
         "and RssAnon (heap).",
         f"- load average (1 min) at the starts: {', '.join(f'{x:.1f}' for x in meta['loadavgs'])} "
         f"on {meta['nproc']} cores shared with other jobs", ""]
    head = "| keys | figure | " + " | ".join(kinds) + (" | ratio |" if len(kinds) == 2 else " |")
    L += [head, "|---" * (len(kinds) + 2 + (len(kinds) == 2)) + "|"]

    def line(n, label, field, fmt="{:,.1f}"):
        vals = [data["results"][n].get(k, {}).get(field) for k in kinds]
        cells = [fmt.format(v) if isinstance(v, (int, float)) else "–" for v in vals]
        ratio = ""
        if len(kinds) == 2:
            a, b = vals
            ratio = f" {a / b:.2f}x |" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else " – |"
        return f"| {int(n):,} | {label} | " + " | ".join(cells) + " |" + ratio

    for n in data["results"]:
        L.append(line(n, "start-up to first answer, s", "first_answer_s_median", "{:.2f}"))
        L.append(line(n, "start-up to all keys served, s", "all_keys_s_median", "{:.2f}"))
        L.append(line(n, "RSS after start, MB (VmRSS)", "rss_2s_mb_median"))
        L.append(line(n, "RSS after start, MB (RssAnon)", "rss_anon_2s_mb_median"))
        L.append(line(n, "RSS after the fill, MB (VmRSS)", "rss_after_fill_mb"))
        L.append(line(n, "data dir after the fill, MB", "data_dir_mb"))
        L.append(line(n, "fill, puts/s (Txns of 100)", "fill_puts_per_s", "{:,.0f}"))
        L.append(line(n, "after the fill, until the data dir settled, s", "settle_s"))
    L += ["", "Largest files of each data directory after the fill and at the end:", ""]
    for n, row in data["results"].items():
        for k in kinds:
            r = row.get(k, {})
            L.append(f"- {int(n):,} keys, {k}: {r.get('largest_files')} -> {r.get('largest_files_end')}")
    L += ["", "Raw figures: `startup_results.json`."]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", default="100000,1000000")
    ap.add_argument("--targets", default="etcdlite,etcd")
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--value-bytes", type=int, default=256)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    keys = [int(k) for k in args.keys.split(",") if k]
    kinds = [k for k in args.targets.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="etcdlite-startup-", dir=args.workdir) as tmp:
        results = run(keys, kinds, args.restarts, args.value_bytes, Path(tmp))
    import subprocess
    commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    data = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "targets": kinds,
                     "command": "python -m benchmarks.startup " + " ".join(sys.argv[1:] if argv is None else argv),
                     "commit": commit, "value_bytes": args.value_bytes, "nproc": os.cpu_count(),
                     "loadavgs": [s["loadavg"] for row in results.values() for r in row.values()
                                  for s in r["starts"]]},
            "results": results}
    out = Path(args.out)
    (out / "startup_results.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "startup_results.md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
