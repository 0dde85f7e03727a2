"""results.json -> results.md (tables with etcdlite/etcd ratios, and the issue's bars)."""

from __future__ import annotations

PAIRS = [("etcdlite1", "etcd1"), ("etcdlite3", "etcd3")]


def _get(res: dict, path: str):
    """'put.16.ops_per_s' -> value; an 'error' dict on the way -> 'error: ...'."""
    cur = res
    for part in path.split("."):
        if isinstance(cur, dict) and "error" in cur and part not in cur:
            return "error: " + str(cur["error"])
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


# "everything else" at or above this, in one put repetition, is listed under the CPU table
DISTURBED_CORES = 0.2


def disturbed_runs(T: dict) -> list[str]:
    """One line per put level where a repetition ran beside DISTURBED_CORES of CPU that
    was neither the servers' nor the generator's (results.json from before these fields
    were recorded: nothing)."""
    def runs(level: dict, key: str, fmt: str = "{:.2f}") -> str:
        return " / ".join(fmt.format(v) for v in level.get(key, []))

    out = []
    for n, r in T.items():
        for c in (1, 16, 64, 256):
            level = _get(r, f"put.{c}")
            if not isinstance(level, dict) or max(level.get("other_cpu_cores_runs", []), default=0) < DISTURBED_CORES:
                continue
            out.append(f"- {r.get('label', n)}, {c} clients: everything else {runs(level, 'other_cpu_cores_runs')} "
                       f"cores (irq+softirq {runs(level, 'irq_softirq_cores_runs')}, steal "
                       f"{runs(level, 'steal_cores_runs')}); ops/s {runs(level, 'ops_per_s_runs', '{:,.0f}')}")
    return out


def _num(v, digits=None) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        if digits is not None:
            return f"{v:.{digits}f}"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _ratio(a, b) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and b:
        return f"{a / b:.2f}x"
    return "–"


class Row:
    def __init__(self, label, paths, fmt=None, ratio=True, nratio=None):
        self.nratio = nratio
        self.label = label
        self.paths = paths if isinstance(paths, list) else [paths]
        self.fmt = fmt
        self.ratio = ratio

    def values(self, res):
        return [_get(res, p) for p in self.paths]

    def cell(self, res):
        if res is None:
            return "not run"
        if "start_error" in res:
            return "error: " + res["start_error"][:60]
        vals = self.values(res)
        for v in vals:
            if isinstance(v, str) and v.startswith("error"):
                return v[:80]
        if self.fmt:
            return self.fmt(*vals)
        return " / ".join(_num(v) for v in vals)

    def ratio_cell(self, a, b):
        if not self.ratio or a is None or b is None:
            return ""
        va, vb = self.values(a), self.values(b)
        parts = [_ratio(x, y) for x, y in zip(va, vb)][: self.nratio]
        return " / ".join(parts) if any(p != "–" for p in parts) else "–"


def _cp(verdict, wps, slowest, errors):
    if verdict is None:
        return "–"
    if isinstance(verdict, str) and verdict.startswith("error"):
        return verdict[:80]
    return f"{verdict}, {_num(wps)} w/s, slowest {_num(slowest, 3)} s, {errors} err"


def _txn(succ, att, ratio, lost):
    if succ is None:
        return "–"
    return f"{_num(succ)} ok/s of {_num(att)} tries/s, lost {lost}"


def _watch(p50, p99, got, exp):
    if p50 is None and got is None:
        return "–"
    return f"{_num(p50)} / {_num(p99)} ms ({got:,}/{exp:,} ev)" if isinstance(got, int) else f"{_num(p50)} / {_num(p99)}"


def _lc(*vals):
    return " / ".join(_num(v) for v in vals)


# the Python watch rows' receiver, by the "receiver" field of their results
# (files written before the lean receiver have none: they came from grpc.aio)
RECEIVER_NAMES = {"h2": "lean h2watch receiver", "grpc": "grpc.aio receiver"}
# the lean receiver's rows judge the watch bar only while it is clearly not what sets the
# pace: each receiving process under half a core on average, and under half the bar in CPU
# per put (a put's 1,000 events come in one burst, which the average over a run at 2 puts/s
# hides: grpc.aio's receiver averaged 0.26 cores while adding ~200 ms to the last events)
LEAN_MAX_CORES = 0.5
LEAN_MAX_MS_PER_PUT = 25.0


def watch_receiver(T: dict) -> str | None:
    """"h2" or "grpc": which receiver produced the Python watch rows (None: no such rows)."""
    kinds = set()
    for r in T.values():
        w = r.get("watch") if isinstance(r, dict) else None
        if isinstance(w, dict):
            for name in ("1x1000", "100x10"):
                row = w.get(name)
                if isinstance(row, dict) and "p99_ms" in row:
                    kinds.add(row.get("receiver", "grpc"))
    if not kinds:
        return None
    return "h2" if kinds == {"h2"} else "grpc" if kinds == {"grpc"} else "mixed"


def _cpu_pair(a, b):
    return " / ".join(_num(v) for v in (a, b))


def rows(receiver: str | None = None):
    rname = RECEIVER_NAMES.get(receiver, "Python receiver")
    out = []
    for c in (1, 16, 64, 256):
        out.append(Row(f"put, {c} clients: ops/s", f"put.{c}.ops_per_s"))
        out.append(Row(f"put, {c} clients: p50 / p99 / max ms",
                       [f"put.{c}.p50_ms", f"put.{c}.p99_ms", f"put.{c}.max_ms"]))
    out.append(Row("put: leader changes (term delta) / errors, all levels",
                   ["_put_term_delta", "_put_errors"], ratio=False))
    out += [
        Row("range linearizable, 64 clients: ops/s", "range.linearizable.ops_per_s"),
        Row("range linearizable: p50 / p99 ms", ["range.linearizable.p50_ms", "range.linearizable.p99_ms"]),
        Row("range serializable, 64 clients: ops/s", "range.serializable.ops_per_s"),
        Row("range serializable: p50 / p99 ms", ["range.serializable.p50_ms", "range.serializable.p99_ms"]),
        Row("txn CAS, 32 clients on 4 keys", ["txn.successes_per_s", "txn.attempts_per_s",
                                               "txn.success_ratio", "txn.lost_updates"], fmt=_txn, nratio=2),
        Row("txn CAS: p50 / p99 ms per attempt", ["txn.p50_ms", "txn.p99_ms"]),
        Row(f"watch, {rname}, 1 stream x 1,000: p50 / p99 ms", ["watch.1x1000.p50_ms", "watch.1x1000.p99_ms",
                                                      "watch.1x1000.events_received",
                                                      "watch.1x1000.events_expected"], fmt=_watch, nratio=2),
        Row("watch 1x1,000: p50 / p99 ms after the put's ack", ["watch.1x1000.after_ack_p50_ms",
                                                                "watch.1x1000.after_ack_p99_ms"]),
        Row(f"watch, {rname}, 100 streams x 10: p50 / p99 ms", ["watch.100x10.p50_ms", "watch.100x10.p99_ms",
                                                      "watch.100x10.events_received",
                                                      "watch.100x10.events_expected"], fmt=_watch, nratio=2),
        Row("watch 100x10: p50 / p99 ms after the put's ack", ["watch.100x10.after_ack_p50_ms",
                                                               "watch.100x10.after_ack_p99_ms"]),
        Row(f"watch, {rname}: CPU cores per receiving process, max (1x1,000 / 100x10)",
            ["watch.1x1000.receiver_cpu_cores_max", "watch.100x10.receiver_cpu_cores_max"],
            fmt=_cpu_pair, ratio=False),
        Row(f"watch, {rname}: receiver CPU ms per put, max per process (1x1,000 / 100x10)",
            ["watch.1x1000.receiver_cpu_ms_per_put_max", "watch.100x10.receiver_cpu_ms_per_put_max"],
            fmt=_cpu_pair, ratio=False),
        Row("watch, Go client, 1 stream x 1,000: p50 / p99 ms", ["watch.go_1x1000.p50_ms", "watch.go_1x1000.p99_ms",
                                                                   "watch.go_1x1000.events_received",
                                                                   "watch.go_1x1000.events_expected"],
            fmt=_watch, nratio=2),
        Row("watch, Go client, 1x1,000: p50 / p99 ms after the put's ack",
            ["watch.go_1x1000.after_ack_p50_ms", "watch.go_1x1000.after_ack_p99_ms"]),
        Row("watch, Go client, 100 streams x 10: p50 / p99 ms", ["watch.go_100x10.p50_ms", "watch.go_100x10.p99_ms",
                                                                 "watch.go_100x10.events_received",
                                                                 "watch.go_100x10.events_expected"],
            fmt=_watch, nratio=2),
        Row("watch, Go client, 100x10: p50 / p99 ms after the put's ack",
            ["watch.go_100x10.after_ack_p50_ms", "watch.go_100x10.after_ack_p99_ms"]),
        Row("watch, Go client: CPU cores of all receiver processes (1x1,000 / 100x10)",
            ["watch.go_1x1000.receiver_cpu_cores", "watch.go_100x10.receiver_cpu_cores"],
            fmt=_cpu_pair, ratio=False),
        Row("lease grant, 64 clients: ops/s", "lease.grant.ops_per_s"),
        Row("lease keep-alive, 64 streams: ops/s", "lease.keepalive.ops_per_s"),
        Row("memory: RSS delta per key (bytes, per member)", "memory.rss_delta_per_key_bytes"),
        Row("memory: data dir MB (per member)", "memory.data_dir_mb"),
        Row("memory: fill rate, 1 KiB puts, 64 clients: ops/s", "memory.fill.ops_per_s"),
        Row("etcdctl check perf --load=m", ["checkperf.m.verdict", "checkperf.m.writes_per_s",
                                            "checkperf.m.slowest_s", "checkperf.m.errors"], fmt=_cp, ratio=False),
        Row("  check perf m: writes/s", "checkperf.m.writes_per_s"),
        Row("etcdctl check perf --load=l", ["checkperf.l.verdict", "checkperf.l.writes_per_s",
                                            "checkperf.l.slowest_s", "checkperf.l.errors"], fmt=_cp, ratio=False),
        Row("  check perf l: writes/s", "checkperf.l.writes_per_s"),
    ]
    return out


def _cpu_per_op(res: dict, clients: int):
    """From results.json; older files lack the field: derived from the medians."""
    v = _get(res, f"put.{clients}.server_cpu_us_per_op")
    if v is None:
        s, o = _get(res, f"put.{clients}.server_cpu_cores"), _get(res, f"put.{clients}.ops_per_s")
        if isinstance(s, (int, float)) and isinstance(o, (int, float)) and o:
            v = round(s * 1e6 / o)
    return v


def _derive(res: dict) -> None:
    put = res.get("put")
    if isinstance(put, dict) and "error" not in put:
        deltas = [v.get("leader_changes", {}).get("term_delta") for v in put.values()]
        res["_put_term_delta"] = sum(d for d in deltas if d is not None) if deltas else None
        res["_put_errors"] = sum(v.get("errors", 0) for v in put.values())


def targets_check(T: dict) -> list[str]:
    lines = []

    def g(t, p):
        return _get(T.get(t) or {}, p)

    def bar(text, ok, detail):
        state = "n/a" if ok is None else ("MET" if ok else "NOT MET")
        lines.append(f"| {text} | {state} | {detail} |")

    v = g("etcdlite3", "checkperf.m.verdict")
    e = g("etcdlite3", "checkperf.m.errors")
    bar("3-member etcdlite passes `check perf --load=m` with no errors",
        None if v is None or str(v).startswith("error") else (v == "PASS" and not e),
        f"{v}, {e} errors" if v is not None else "not run")
    a, b = g("etcdlite3", "put.256.ops_per_s"), g("etcd3", "put.256.ops_per_s")
    ok = a / b >= 0.5 if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None
    bar("3-member put at 256 clients >= 0.5x etcd's", ok, f"{_num(a)} vs {_num(b)} ops/s = {_ratio(a, b)}")
    a, b = g("etcdlite3", "put.256.p99_ms"), g("etcd3", "put.256.p99_ms")
    ok = a / b <= 2 if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None
    bar("3-member put p99 at 256 clients <= 2x etcd's", ok, f"{_num(a)} vs {_num(b)} ms = {_ratio(a, b)}")
    worst = None
    for c in (1, 16, 64, 256):
        a, b = g("etcdlite1", f"put.{c}.ops_per_s"), g("bare", f"put.{c}.ops_per_s")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            if c in (64, 256):
                worst = min(worst, a / b) if worst is not None else a / b
    a, b = g("etcdlite1", "put.256.ops_per_s"), g("bare", "put.256.ops_per_s")
    bar("1-member put >= 0.8x the bare gRPC ceiling (64 and 256 clients)",
        None if worst is None else worst >= 0.8,
        f"worst ratio {worst:.2f}x; at 256 clients {_num(a)} vs {_num(b)} ops/s" if worst is not None else "not run")
    text, ok, detail = watch_bar(T)
    bar(text, ok, detail)
    tot_lc, tot_err, seen = 0, 0, False
    for t in ("etcdlite1", "etcdlite3"):
        r = T.get(t) or {}
        if r.get("_put_term_delta") is not None:
            seen = True
            tot_lc += r["_put_term_delta"]
            tot_err += r.get("_put_errors") or 0
    bar("zero leader changes and zero errors during the put benchmarks",
        (tot_lc == 0 and tot_err == 0) if seen else None, f"{tot_lc} term changes, {tot_err} errors (etcdlite 1 + 3)")
    return lines


def watch_bar(T: dict) -> tuple:
    """(bar text, met?, measured) of the watch bar.

    Judged on the lean receiver's rows when they are there and it is clearly not the
    bottleneck (LEAN_MAX_CORES, LEAN_MAX_MS_PER_PUT, in every etcdlite row); otherwise on
    the Go etcdctl receivers (one process per stream: with 100 streams, 100 processes wake
    per event on 2 cores). grpc.aio's receiver never judges it: it sets the pace with 1,000
    watchers (the real etcd's p99s with it are as far above 50 ms). Both are shown."""

    def g(t, p):
        return _get(T.get(t) or {}, p)

    lite, shapes = ("etcdlite1", "etcdlite3"), ("1x1000", "100x10")
    go = [(t, n, g(t, f"watch.go_{n}.p99_ms")) for t in lite for n in shapes]
    py = [(t, n, g(t, f"watch.{n}.p99_ms")) for t in lite for n in shapes]
    receiver = watch_receiver(T)
    lean_ok, why = False, ""
    if receiver == "h2":
        rows_ = [(t, n) for t, n, x in py if isinstance(x, (int, float))]
        cores = [g(t, f"watch.{n}.receiver_cpu_cores_max") for t, n in rows_]
        ms = [g(t, f"watch.{n}.receiver_cpu_ms_per_put_max") for t, n in rows_]
        nums_ok = rows_ and all(isinstance(v, (int, float)) for v in cores + ms)
        lean_ok = bool(nums_ok) and max(cores) <= LEAN_MAX_CORES and max(ms) <= LEAN_MAX_MS_PER_PUT
        why = (f"receiver CPU at most {_num(max(cores))} cores per process and {_num(max(ms))} ms per put"
               if nums_ok else "receiver CPU not recorded")
    judged = py if lean_ok else go
    nums = [x for _, _, x in judged if isinstance(x, (int, float))]
    ok = (max(nums) <= 50) if nums else None

    def fig(rows_):
        return ", ".join(f"{t} {n}: {_num(x)} ms" for t, n, x in rows_)

    pyname = RECEIVER_NAMES.get(receiver, "Python receiver")
    if lean_ok:
        text = "watch p99 <= 50 ms with 1,000 watchers (lean h2watch receivers)"
        detail = (f"judged with the {pyname} ({why}: not the bottleneck): {fig(py)}; "
                  f"with Go etcdctl receivers: {fig(go)}")
    else:
        text = "watch p99 <= 50 ms with 1,000 watchers (Go etcdctl receivers)"
        reason = (f" (not judged with it: {why}, over {LEAN_MAX_CORES:g} cores or {LEAN_MAX_MS_PER_PUT:g} ms)"
                  if receiver == "h2" else " (not judged with it: it sets the pace)" if py else "")
        detail = fig(go) + (f"; with the {pyname}{reason}: {fig(py)}" if receiver else "")
    return text, ok, detail


# etcdlite with syncs (fsync before acknowledging, the default) and without (--unsafe-no-fsync)
SYNC_PAIRS = [("etcdlite1", "etcdlite1_nofsync"), ("etcdlite3", "etcdlite3_nofsync")]


def sync_cost(T: dict) -> list[str]:
    """The section on what the syncs cost: etcdlite with them beside etcdlite without them
    (nothing if no no-sync target ran)."""
    pairs = [(a, b) for a, b in SYNC_PAIRS if b in T]
    if not pairs:
        return []
    L = ["## What the syncs cost: etcdlite with fsync (default) and with `--unsafe-no-fsync`", ""]
    L.append("The no-sync member's put repetitions took turns with the syncing one's (both up); "
             "\"by pair\" is each pair's ratio of ops/s, in order. ratio = with syncs ÷ without.")
    L.append("")
    head = "| benchmark |"
    for a, b in pairs:
        head += f" {T.get(a, {}).get('label', a)} | {T[b].get('label', b)} | ratio | by pair |"
    L.append(head)
    L.append("|---" * (1 + 4 * len(pairs)) + "|")
    table = []
    for c in PUT_CLIENTS:
        table.append((Row(f"put, {c} clients: ops/s", f"put.{c}.ops_per_s"), f"put.{c}.ops_per_s_runs"))
        table.append((Row(f"put, {c} clients: p50 / p99 / max ms",
                          [f"put.{c}.p50_ms", f"put.{c}.p99_ms", f"put.{c}.max_ms"]), None))
    for load in ("m", "l"):
        table.append((Row(f"check perf {load}: writes/s, slowest s",
                          [f"checkperf.{load}.writes_per_s", f"checkperf.{load}.slowest_s"], nratio=1), None))
    for row, runs in table:
        cells = [row.label]
        for a, b in pairs:
            ra, rb = T.get(a), T.get(b)
            by_pair = ""
            if runs:
                xa, xb = _get(ra or {}, runs), _get(rb or {}, runs)
                if isinstance(xa, list) and isinstance(xb, list):
                    by_pair = ", ".join(_ratio(x, y) for x, y in zip(xa, xb))
            cells += [row.cell(ra), row.cell(rb), row.ratio_cell(ra, rb), by_pair]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    return L


PUT_CLIENTS = (1, 16, 64, 256)


def render(results: dict) -> str:
    T = results.get("targets", {})
    for r in T.values():
        _derive(r)
    m = results.get("meta", {})
    s = results.get("settings", {})
    L = []
    L.append("# etcdlite benchmarks: side by side with etcd 3.4")
    L.append("")
    L.append(f"- date: {m.get('date')}; run took {results.get('elapsed_s', 0):.0f} s"
             + (" (**interrupted: partial results**)" if results.get("interrupted") else ""))
    L.append(f"- machine: {m.get('nproc')} cores, {m.get('cpu_model')}, {m.get('mem_total_mb')} MiB RAM, "
             f"Linux {m.get('kernel')}; data dirs on {m.get('data_dir_fs')}")
    L.append(f"- versions: {m.get('etcd')} ({m.get('etcdctl')}); etcdlite at {m.get('etcdlite_commit')}, "
             f"Python {m.get('python')}, grpcio {m.get('grpcio')}, pysyncobj {m.get('pysyncobj')}")
    L.append(f"- command: `{results.get('command')}`")
    L.append(f"- settings: {s.get('reps')} repetitions x {s.get('duration_s')} s per measurement (median "
             f"throughput; latency percentiles over all repetitions); {s.get('load_processes')} load processes; "
             f"puts: {s.get('put_key_bytes')}-byte keys over a {s.get('put_keyspace'):,}-key space, "
             f"{s.get('put_value_bytes')}-byte values" if s else "- settings: –")
    receiver = watch_receiver(T)
    unary = ("`benchmarks/h2client.py` (a lean HTTP/2 gRPC client on asyncio)" if s.get("client") == "h2"
             else "Python grpc.aio")
    L.append(f"- clients: put, range, txn, lease grant and the memory fill: {unary}, coroutines in the "
             "`benchmarks/load.py` worker processes, channels spread over all members; lease keep-alives: "
             "grpc.aio; check perf: the Go etcdctl 3.4. The load generator runs on the same cores as the "
             "servers: see its CPU use below.")
    if receiver == "h2":
        L.append("- watch receivers: the rows named \"lean h2watch receiver\" come from `benchmarks/h2watch.py` "
                 "(Watch streams spoken over HTTP/2 directly on asyncio, responses parsed by upb, one arrival "
                 "time per socket read; ~10-15 µs of CPU per response) in the worker processes, streams spread "
                 "over up to 8 connections per process; the \"Go client\" rows from `etcdctl watch -i`, one "
                 "process per stream (`benchmarks/gowatch.py`). Receiver CPU is shown for both: per process "
                 "(max) and per put for the lean one, all processes together for Go.")
    elif receiver is not None:
        L.append("- watch receivers: the rows named \"grpc.aio receiver\" come from Python grpc.aio streams in "
                 "the worker processes (~200 µs of CPU per response: with 1,000 watchers the receiver sets the "
                 "pace, for etcd too); the \"Go client\" rows from `etcdctl watch -i`, one process per stream "
                 "(`benchmarks/gowatch.py`).")
    L.append("- ratio = etcdlite ÷ etcd with the same member count (throughput: higher is better; "
             "latency, memory, size: lower is better).")
    L.append("- watch: all watchers on one key, a writer puts timestamped values at "
             f"{s.get('watch_rate_per_s', '?')}/s; latency = receive time - the writer's send time carried in "
             "the value (so it includes the put's own commit); \"after the put's ack\" = receive time - "
             "the time the writer got the put's response. Watchers sit on another member than the writer "
             "when there are 3. Events not received within 10 s count as lost (received/expected shown).")
    L.append("- txn CAS: each client reads nothing up front; Txn(mod_revision == last seen -> put value+1, "
             "else range) on one of 4 keys; \"lost\" = acknowledged increments missing from the final values.")
    L.append("- memory: a fresh instance per target, N keys of 1 KiB put once each; VmRSS includes "
             "file-backed mapped pages (etcd's bbolt mmap; etcdlite maps the Raft journal it replays at start, read-only); data dir = du.")
    L.append("- check perf: the Go etcdctl, 60 s per load (m = 1,000 writes/s from 200 clients, "
             "l = 8,000 from 500; 256-byte keys, 1 KiB values); writes under /etcdctl-check-perf/ "
             "and deletes them afterwards.")
    for note in results.get("notes", []):
        L.append(f"- **note:** {note}")
    L.append("")
    L.append("| benchmark | etcdlite 1 | etcd 1 | ratio | etcdlite 3 | etcd 3 | ratio |")
    L.append("|---|---|---|---|---|---|---|")
    for row in rows(receiver):
        cells = [row.label]
        for lite, ref in PAIRS:
            a, b = T.get(lite), T.get(ref)
            cells += [row.cell(a), row.cell(b), row.ratio_cell(a, b)]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    bare, bare_g = T.get("bare"), T.get("bare_grpcio")
    L.append("## Bare gRPC ceiling (a server that only stores Put in a dict)")
    L.append("")
    L.append("\"bare\" runs on etcdlite's own gRPC server (grpclite/), the one etcdlite "
             "serves with; \"bare grpc.aio\" on grpcio's server, which etcdlite used before (and still "
             "can: `--experimental-grpc-server=grpcio`).")
    paired = (bare or {}).get("paired_with") == "etcdlite1"
    if paired:
        L.append("")
        L.append("bare's put repetitions took turns with etcdlite 1's (etcdlite 1, bare, etcdlite 1, "
                 "bare, ...), both servers up, so that both met the same conditions; the last column "
                 "has the ratio of each pair.")
    L.append("")
    L.append("| put clients | bare ops/s | bare p50 / p99 ms | etcdlite 1 ops/s | etcdlite 1 ÷ bare "
             "| bare grpc.aio ops/s | bare grpc.aio p50 / p99 ms | etcd 1 ops/s |"
             + (" etcdlite 1 ÷ bare, by pair |" if paired else ""))
    L.append("|---" * (9 if paired else 8) + "|")
    for c in (1, 16, 64, 256):
        b = _get(bare or {}, f"put.{c}.ops_per_s")
        bg = _get(bare_g or {}, f"put.{c}.ops_per_s")
        a = _get(T.get("etcdlite1") or {}, f"put.{c}.ops_per_s")
        e = _get(T.get("etcd1") or {}, f"put.{c}.ops_per_s")
        lat = f"{_num(_get(bare or {}, f'put.{c}.p50_ms'))} / {_num(_get(bare or {}, f'put.{c}.p99_ms'))}"
        lat_g = f"{_num(_get(bare_g or {}, f'put.{c}.p50_ms'))} / {_num(_get(bare_g or {}, f'put.{c}.p99_ms'))}"
        row = f"| {c} | {_num(b)} | {lat} | {_num(a)} | {_ratio(a, b)} | {_num(bg)} | {lat_g} | {_num(e)} |"
        if paired:
            ra = _get(T.get("etcdlite1") or {}, f"put.{c}.ops_per_s_runs")
            rb = _get(bare, f"put.{c}.ops_per_s_runs")
            pairs = zip(ra, rb) if isinstance(ra, list) and isinstance(rb, list) else ()
            row += " " + (", ".join(_ratio(x, y) for x, y in pairs) or "–") + " |"
        L.append(row)
    L.append("")
    l_bare = _get(bare or {}, "checkperf.l.writes_per_s")
    if isinstance(l_bare, (int, float)):
        l_lite = _get(T.get("etcdlite1") or {}, "checkperf.l.writes_per_s")
        l_etcd = _get(T.get("etcd1") or {}, "checkperf.l.writes_per_s")
        L.append("`etcdctl check perf --load=l` (500 connections, one write each at a time) against "
                 "bare: what grpclite serves with no store, no journal and no sync behind it.")
        L.append("")
        L.append("| check perf l | bare w/s | etcdlite 1 w/s | etcdlite 1 ÷ bare | etcd 1 w/s "
                 "| bare ÷ etcd 1 | etcdlite 1 ÷ etcd 1 |")
        L.append("|---" * 7 + "|")
        L.append(f"| writes/s | {_num(l_bare)} | {_num(l_lite)} | {_ratio(l_lite, l_bare)} | {_num(l_etcd)} "
                 f"| {_ratio(l_bare, l_etcd)} | {_ratio(l_lite, l_etcd)} |")
        L.append("")
    l_sync = _get(T.get("bare_sync") or {}, "checkperf.l.writes_per_s")
    if isinstance(l_sync, (int, float)):
        l_lite = _get(T.get("etcdlite1") or {}, "checkperf.l.writes_per_s")
        l_etcd = _get(T.get("etcd1") or {}, "checkperf.l.writes_per_s")
        L.append("bare + fdatasync (`bare_server --sync`): bare whose Puts are answered after one "
                 "group-committed fdatasync a turn of the loop, as etcdlite's, and nothing else: the "
                 "ceiling of a server that syncs before it answers.")
        L.append("")
        L.append("| check perf l | bare + fdatasync w/s | etcdlite 1 w/s | etcdlite 1 ÷ bare + fdatasync "
                 "| etcd 1 w/s | bare + fdatasync ÷ etcd 1 |")
        L.append("|---" * 6 + "|")
        L.append(f"| writes/s | {_num(l_sync)} | {_num(l_lite)} | {_ratio(l_lite, l_sync)} | {_num(l_etcd)} "
                 f"| {_ratio(l_sync, l_etcd)} |")
        L.append("")
    L += sync_cost(T)
    L.append("## CPU during the put benchmarks (cores used, of "
             f"{m.get('nproc')}): load generator / server(s) / everything else on the machine")
    L.append("")
    names = [n for n in ("etcdlite1", "etcd1", "etcdlite3", "etcd3", "bare", "bare_grpcio") if n in T]
    L.append("| put clients | " + " | ".join(T[n].get("label", n) for n in names) + " |")
    L.append("|---" * (len(names) + 1) + "|")
    for c in (1, 16, 64, 256):
        cells = []
        for n in names:
            g_ = _get(T[n], f"put.{c}.gen_cpu_cores")
            s_ = _get(T[n], f"put.{c}.server_cpu_cores")
            o_ = _get(T[n], f"put.{c}.other_cpu_cores")
            cells.append(f"{_num(g_)} / {_num(s_)} / {_num(o_)}" if not isinstance(g_, str) else g_[:40])
        L.append(f"| {c} | " + " | ".join(cells) + " |")
    L.append("")
    disturbed = disturbed_runs(T)
    if disturbed:
        L.append(f"Repetitions beside {DISTURBED_CORES} cores or more of everything else (by repetition; "
                 "irq+softirq and steal, machine-wide from /proc/stat, tell what it may have been: "
                 "interrupt time can also be counted in a process's own CPU, so they need not add up):")
        L.append("")
        L += disturbed
        L.append("")
    L.append("## Server CPU per put (microseconds of CPU, all members together, per acknowledged put)")
    L.append("")
    L.append("Median over the repetitions. It moves much less than ops/s when other processes take "
             "CPU from the servers.")
    L.append("")
    L.append("| put clients | " + " | ".join(T[n].get("label", n) for n in names) + " |")
    L.append("|---" * (len(names) + 1) + "|")
    for c in (1, 16, 64, 256):
        L.append(f"| {c} | " + " | ".join(_num(_cpu_per_op(T[n], c)) for n in names) + " |")
    L.append("")
    L.append("## The issue's bars (issue 4)")
    L.append("")
    L.append("| bar | state | measured |")
    L.append("|---|---|---|")
    L += targets_check(T)
    L.append("")
    errs = []
    for n, r in T.items():
        for b, v in r.items():
            if isinstance(v, dict) and "error" in v:
                errs.append(f"- {n} {b}: {v['error']}")
        if "start_error" in r:
            errs.append(f"- {n}: could not start: {r['start_error']}")
    if errs:
        L.append("## Errors")
        L.append("")
        L += errs
        L.append("")
    L.append("Full data (per-run throughputs, error kinds, Status before/after, check perf output): `results.json`.")
    return "\n".join(L) + "\n"
