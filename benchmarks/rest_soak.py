"""Two informers of ConfigMaps side by side under churn: one over Kubernetes' REST API with
client-go's semantics (list, watch from the list's resourceVersion with bookmarks, on a 410
Gone / ERROR event relist and report the differences as synthetic events, as client-go's
Reflector and DeltaFIFO do) and one over the apiserver's gRPC watch (apiserver.client). A writer
creates, updates and deletes ConfigMaps at a steady rate; every so often, in turn, the
apiserver is restarted with etcd compacted while it is down, or both informers are cut off
while the writer goes on past what the apiserver's watch cache keeps: either way both
watches come back too old (410 Expired) and must relist. At the end both caches must equal
the apiserver's list, and every write must have been seen: as a watch event with its
resourceVersion, or inside a relist's window (the writes between the last resourceVersion the
watch saw and the relist's).

    python -m benchmarks.rest_soak --minutes 10 [--rate 20] [--force-every 60] [--watch-cache-size 100]
                                   [--out benchmarks/rest_soak_results.md]

tests/test_rest_soak.py runs the same for ~14 s with one forced relist of each kind.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc

from apiserver.client import ApiError, Client
from apiserver.pb import core_pb2

NAMESPACE = "soak"
REPO = Path(__file__).resolve().parents[1]


class Expired(Exception):
    """The watch's resourceVersion is older than the server keeps: relist."""


class Informer(threading.Thread):
    """A Reflector + store: list, watch from the list's resourceVersion; on a broken
    connection watch again from the last resourceVersion seen (as client-go does), on
    Expired list again and turn the differences into synthetic events."""

    name_ = "?"

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.store: dict[str, int] = {}           # name -> resourceVersion
        self.seen: dict[str, list[int]] = {}      # name -> resourceVersions seen as watch events
        self.arrived: dict[int, float] = {}       # resourceVersion -> when its event arrived
        self.windows: list[tuple[int, int]] = []  # (last rv watched, relist rv]: covered by a relist
        self.synthetic = {"ADDED": 0, "MODIFIED": 0, "DELETED": 0}
        self.events = self.bookmarks = self.relists = self.reconnects = 0
        self.rv = 0
        self.errors: list[str] = []
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.away_until = 0.0  # partitioned from the apiserver until then (see partition)

    def partition(self, seconds: float) -> None:
        """Cut the watch and stay away for ``seconds`` (a client partitioned from the
        apiserver): with more writes meanwhile than the watch cache keeps, the watch
        from the last resourceVersion is then Expired and the informer relists."""
        self.away_until = time.monotonic() + seconds
        self.cut()

    def cut(self) -> None:
        raise NotImplementedError

    # subclasses: list_() -> (rv, {name: rv}); watch_(rv) yields (type, name, rv), raises
    # Expired, or ConnectionError (anything else) when the stream breaks
    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.relist()
                break
            except Exception:
                time.sleep(0.2)
        while not self.done.is_set():
            while time.monotonic() < self.away_until and not self.done.is_set():
                time.sleep(0.05)
            try:
                for typ, name, rv in self.watch_(self.rv):
                    self.apply(typ, name, rv)
                    if self.done.is_set():
                        return
                    if time.monotonic() < self.away_until:
                        break  # partition() came between the check above and the watch
            except Expired:
                while not self.done.is_set():
                    try:
                        self.relist()
                        break
                    except Exception:
                        time.sleep(0.2)
            except Exception as e:  # the apiserver went away: watch again from self.rv
                if self.done.is_set():
                    return
                if time.monotonic() < self.away_until:
                    continue  # cut by partition()
                self.reconnects += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{type(e).__name__}: {e}"[:200])
                time.sleep(0.2)

    def relist(self) -> None:
        rv, items = self.list_()
        with self.lock:
            if self.relists or self.store:
                self.windows.append((self.rv, rv))
                for name, item_rv in items.items():
                    if name not in self.store:
                        self.synthetic["ADDED"] += 1
                    elif self.store[name] != item_rv:
                        self.synthetic["MODIFIED"] += 1
                self.synthetic["DELETED"] += sum(1 for n in self.store if n not in items)
            self.store = dict(items)
            self.rv = rv
            self.relists += 1

    def apply(self, typ: str, name: str, rv: int) -> None:
        now = time.monotonic()
        with self.lock:
            if typ == "BOOKMARK":
                self.bookmarks += 1
            else:
                self.events += 1
                self.seen.setdefault(name, []).append(rv)
                self.arrived[rv] = now
                if typ == "DELETED":
                    self.store.pop(name, None)
                else:
                    self.store[name] = rv
            self.rv = max(self.rv, rv)

    def stop(self) -> None:
        self.done.set()


class RestInformer(Informer):
    """Plain HTTP/1.1 and JSON, as client-go's Reflector calls it."""

    name_ = "REST"

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def list_(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps", headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
        finally:
            conn.close()
        if resp.status != 200:
            raise ConnectionError(f"list: {resp.status} {body.get('message')}")
        return int(body["metadata"]["resourceVersion"]), {
            i["metadata"]["name"]: int(i["metadata"]["resourceVersion"]) for i in body["items"]}

    def watch_(self, rv: int):
        conn = self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps?watch=true&resourceVersion={rv}"
                         "&allowWatchBookmarks=true&timeoutSeconds=300", headers={"Accept": "application/json"})
            resp = conn.getresponse()
            if resp.status == 410:
                raise Expired(resp.read()[:200])
            if resp.status != 200:
                raise ConnectionError(f"watch: {resp.status} {resp.read()[:200]!r}")
            while True:
                line = resp.readline()
                if not line:
                    return  # timeoutSeconds or the server ended it: watch again from the last rv
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired(obj.get("message"))
                    raise ConnectionError(f"watch ERROR event: {obj}")
                meta = obj["metadata"]
                yield event["type"], meta.get("name", ""), int(meta["resourceVersion"])
        finally:
            conn.close()

    def stop(self) -> None:
        super().stop()
        self.cut()

    def cut(self) -> None:
        if self.conn is not None and self.conn.sock is not None:
            try:
                self.conn.sock.shutdown(2)
            except OSError:
                pass


class GrpcInformer(Informer):
    """apiserver.client's List and Watch."""

    name_ = "gRPC"

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.client = Client(endpoint, timeout=30)
        self.w = None

    def list_(self):
        res = self.client.list("configmaps", NAMESPACE)
        return int(res.resource_version), {o.metadata.name: int(o.metadata.resource_version) for o in res.items}

    def watch_(self, rv: int):
        self.w = self.client.watch("configmaps", NAMESPACE, resource_version=str(rv), bookmarks=True)
        try:
            for event in self.w:
                yield event.type, event.object.metadata.name, int(event.object.metadata.resource_version)
        except ApiError as e:
            if e.reason == "Expired":
                raise Expired(str(e)) from None
            raise

    def stop(self) -> None:
        super().stop()
        self.cut()

    def cut(self) -> None:
        if self.w is not None:
            self.w.stop()


class Churn(threading.Thread):
    """Creates, updates and deletes ConfigMaps among ``objects`` names at ``rate`` writes a
    second (a steady schedule, not as fast as possible); pauses while ``hold`` is set.
    Records each write as (name, type, resourceVersion, when acknowledged)."""

    def __init__(self, endpoint: str, rate: float, objects: int, seed: int = 21) -> None:
        super().__init__(daemon=True)
        self.client = Client(endpoint, timeout=10)
        self.rate, self.objects = rate, objects
        self.rng = random.Random(seed)
        self.writes: list[tuple[str, str, int, float]] = []
        self.live: dict[str, core_pb2.ConfigMap] = {}
        self.hold = threading.Event()
        self.done = threading.Event()
        self.failed: list[str] = []

    def run(self) -> None:
        step, nxt, n = 1.0 / self.rate, time.monotonic(), 0
        while not self.done.is_set():
            if self.hold.is_set():
                time.sleep(0.05)
                nxt = time.monotonic()
                continue
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            nxt += step
            n += 1
            name = f"cm-{self.rng.randrange(self.objects)}"
            try:
                self.one(name, n)
            except (ApiError, grpc.RpcError) as e:
                # the outcome is unknown (the apiserver went away mid-call): read it back
                self.failed.append(f"{name}: {e}"[:200])
                self.resync(name)

    def one(self, name: str, n: int) -> None:
        cur = self.live.get(name)
        if cur is None:
            cm = core_pb2.ConfigMap()
            cm.metadata.name, cm.metadata.namespace = name, NAMESPACE
            cm.data["n"] = str(n)
            out, typ = self.client.create(cm), "ADDED"
        elif self.rng.random() < 0.25:
            out, typ = self.client.delete("configmaps", name, NAMESPACE), "DELETED"
        else:
            cm = core_pb2.ConfigMap()
            cm.CopyFrom(cur)
            cm.data["n"] = str(n)
            out, typ = self.client.update(cm), "MODIFIED"
        self.writes.append((name, typ, int(out.metadata.resource_version), time.monotonic()))
        if typ == "DELETED":
            self.live.pop(name, None)
        else:
            self.live[name] = out

    def resync(self, name: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.done.is_set():
            try:
                self.live[name] = self.client.get("configmaps", name, NAMESPACE)
                return
            except ApiError as e:
                if e.reason == "NotFound":
                    self.live.pop(name, None)
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)


def compact_etcd(etcd_endpoint: str) -> int:
    """Move etcd's revision on (two writes no resource watches) and compact to it: a
    watch from any resourceVersion before is Expired. Returns the compacted revision."""
    from etcdlite.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    with grpc.insecure_channel(etcd_endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(2):
            rev = kv.Put(rpc_pb2.PutRequest(key=b"/soak-filler", value=str(i).encode()), timeout=10).header.revision
        kv.Compact(rpc_pb2.CompactionRequest(revision=rev, physical=True), timeout=30)
    return rev


def force_relist(api, etcd_endpoint: str, churn: Churn) -> float:
    """Restart the apiserver with etcd compacted while it was down. Returns the seconds
    the writer was held."""
    t = time.monotonic()
    churn.hold.set()
    try:
        api.kill()
        compact_etcd(etcd_endpoint)
        api.start()
    finally:
        churn.hold.clear()
    return time.monotonic() - t


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else float("nan")


def verify(inf: Informer, writes, final: dict[str, int]) -> dict:
    """What the informer missed: writes neither seen as an event nor inside a relist
    window; events seen twice or out of order; its store against the final list."""
    with inf.lock:
        seen_rvs = {rv for rvs in inf.seen.values() for rv in rvs}
        missed = [w for w in writes if w[2] not in seen_rvs
                  and not any(lo < w[2] <= hi for lo, hi in inf.windows)]
        disorder = [n for n, rvs in inf.seen.items() if any(b <= a for a, b in zip(rvs, rvs[1:]))]
        extra = sorted(seen_rvs - {w[2] for w in writes})
        lags = [inf.arrived[w[2]] - w[3] for w in writes if w[2] in inf.arrived]
        store = dict(inf.store)
        stale = sorted(n for n in set(store) | set(final) if store.get(n) != final.get(n))
        return {"api": inf.name_, "events": inf.events, "bookmarks": inf.bookmarks, "relists": inf.relists,
                "reconnects": inf.reconnects, "synthetic": dict(inf.synthetic), "missed": missed,
                "disorder": disorder, "unknown_events": extra, "stale": stale, "objects": len(store),
                "lag_p50": percentile(lags, 50), "lag_p99": percentile(lags, 99), "errors": list(inf.errors)}


def soak(api, etcd_endpoint: str, seconds: float, *, rate: float = 20, objects: int = 40,
         forced: tuple[tuple[float, str], ...] = (), away: int = 200, settle: float = 30) -> dict:
    """Run both informers for ``seconds`` of churn, forcing relists at the given
    (seconds from the start, kind): "restart" (the apiserver restarted, etcd compacted
    while it was down) or "partition" (both informers away while the writer makes
    ``away`` writes: the apiserver's watch cache must keep fewer).
    Returns the figures and the verdicts (see verify)."""
    client = Client(api.endpoint, timeout=30)
    ns = core_pb2.Namespace()
    ns.metadata.name = NAMESPACE
    try:
        client.create(ns)
    except ApiError as e:
        if e.reason != "AlreadyExists":
            raise
    rest, grpc_inf = RestInformer(api.port), GrpcInformer(api.endpoint)
    rest.start()
    grpc_inf.start()
    deadline = time.monotonic() + 30
    while not (rest.relists and grpc_inf.relists):
        if time.monotonic() > deadline:
            raise RuntimeError("the informers did not list in 30 s: is the apiserver serving? see its log")
        time.sleep(0.05)
    churn = Churn(api.endpoint, rate, objects)
    start = time.monotonic()
    churn.start()
    held, partitions = [], 0
    for at, kind in sorted(forced):
        while time.monotonic() - start < at:
            time.sleep(0.1)
        if kind == "restart":
            held.append(force_relist(api, etcd_endpoint, churn))
        else:
            partitions += 1
            n0, until = len(churn.writes), time.monotonic() + 120
            for i in (rest, grpc_inf):
                i.partition(3600)
            while len(churn.writes) < n0 + away and time.monotonic() < until:
                time.sleep(0.05)
            for i in (rest, grpc_inf):
                i.away_until = 0.0
    while time.monotonic() - start < seconds:
        time.sleep(0.1)
    churn.done.set()
    churn.join(30)
    took = time.monotonic() - start
    final_list = client.list("configmaps", NAMESPACE)
    final = {o.metadata.name: int(o.metadata.resource_version) for o in final_list.items}
    # wait (with a deadline) until both caches hold what the apiserver lists
    until = time.monotonic() + settle
    while time.monotonic() < until and not all(dict(i.store) == final for i in (rest, grpc_inf)):
        time.sleep(0.05)
    results = [verify(i, churn.writes, final) for i in (rest, grpc_inf)]
    for i in (rest, grpc_inf):
        i.stop()
    for i in (rest, grpc_inf):
        i.join(5)
    client.close() if hasattr(client, "close") else None
    kinds = {t: sum(1 for w in churn.writes if w[1] == t) for t in ("ADDED", "MODIFIED", "DELETED")}
    return {"seconds": took, "writes": len(churn.writes), "kinds": kinds, "failed_writes": churn.failed,
            "restarts": len(held), "held": held, "partitions": partitions, "away": away,
            "final_objects": len(final), "informers": results}


def ok(result: dict) -> list[str]:
    """The problems, empty when both informers saw everything."""
    problems = []
    for r in result["informers"]:
        for key in ("missed", "disorder", "unknown_events", "stale"):
            if r[key]:
                problems.append(f"{r['api']}: {key}: {r[key][:5]} ({len(r[key])})")
        forced = result["restarts"] + result["partitions"]
        if r["relists"] < 1 + forced:
            problems.append(f"{r['api']}: {r['relists']} lists for {forced} forced relists")
    return problems


def report(result: dict, minutes: float, rate: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    problems = ok(result)
    lines = [
        "# REST informer (client-go semantics) and gRPC watch under churn", "",
        f"- command: `python -m benchmarks.rest_soak --minutes {minutes:g} --rate {rate:g}` "
        f"(apiserver `--watch-cache-size {result['watch_cache_size']}`)",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC; churn {result['seconds']:.0f} s",
        f"- machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; load average at the end (1/5/15 min): {load}",
        f"- git commit: {commit}",
        "- one etcdlite member, one apiserver; a writer (gRPC) creates/updates/deletes ConfigMaps "
        "among 40 names at a steady rate; the REST informer lists and watches with "
        "allowWatchBookmarks over HTTP/1.1 JSON, relisting on 410 (HTTP or ERROR event); the gRPC "
        "informer does the same with apiserver.client; forced relists: the apiserver killed, etcd "
        "compacted past every watcher, the apiserver started again (the writer waits meanwhile)",
        "",
        f"- writes: {result['writes']} ({', '.join(f'{k} {v}' for k, v in result['kinds'].items())}); "
        f"writes whose outcome was lost: {len(result['failed_writes'])}; objects at the end: "
        f"{result['final_objects']}",
        f"- forced relists: {result['restarts']} apiserver restarts with etcd compacted (writer held "
        f"{', '.join(f'{h:.1f}' for h in result['held'])} s) and {result['partitions']} partitions (both "
        f"informers away while the writer made {result['away']} writes, past the watch cache's "
        f"{result['watch_cache_size']} events)",
        "- verdict: " + ("; ".join(problems) if problems
                         else "both caches equal the final list and every write was seen"),
        "",
        "| informer | events | bookmarks | lists | reconnects | synthetic (add/mod/del) | missed | "
        "out of order | stale at end | event lag p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["informers"]:
        s = r["synthetic"]
        lines.append(f"| {r['api']} | {r['events']} | {r['bookmarks']} | {r['relists']} | {r['reconnects']} | "
                     f"{s['ADDED']}/{s['MODIFIED']}/{s['DELETED']} | {len(r['missed'])} | {len(r['disorder'])} | "
                     f"{len(r['stale'])} | {r['lag_p50'] * 1e3:.1f} / {r['lag_p99'] * 1e3:.1f} |")
    lines += ["", "missed = writes neither seen as a watch event (by resourceVersion) nor inside a "
              "relist's window (after the last resourceVersion the watch saw, up to the relist's); "
              "lag = from the writer's acknowledgement to the event's arrival (events seen)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from harness.plane import start_apiserver
    from harness.procs import Registry

    p = argparse.ArgumentParser(prog="python -m benchmarks.rest_soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rate", type=float, default=20, help="writes a second")
    p.add_argument("--force-every", type=float, default=60,
                   help="seconds between forced relists (apiserver restarts and partitions, in turn)")
    p.add_argument("--watch-cache-size", type=int, default=100)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "rest_soak_results.md"))
    args = p.parse_args(argv)
    seconds = args.minutes * 60
    times = [t for t in (args.force_every * k for k in range(1, 1000)) if t < seconds - 20]
    forced = tuple((t, ("restart", "partition")[k % 2]) for k, t in enumerate(times))
    away = 2 * args.watch_cache_size
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop etcdlite and the apiserver too
    reg = Registry()
    with tempfile.TemporaryDirectory(prefix="rest-soak-") as tmp:
        try:
            member = reg.start_etcdlite(tmp, name="etcd")
            api = start_apiserver(tmp, member.url, registry=reg, log_level="warning",
                                  watch_cache_size=args.watch_cache_size)
            result = soak(api, member.endpoint, seconds, rate=args.rate, forced=forced, away=away)
            result["watch_cache_size"] = args.watch_cache_size
        finally:
            reg.cleanup()
    text = report(result, args.minutes, args.rate)
    Path(args.out).write_text(text)
    print(text)
    return 1 if ok(result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
