"""One case of `python -m benchmarks` on a fresh target, printed as one JSON line:

    python -m benchmarks.one_case TARGET OP CLIENTS [--duration 4] [--first leader|follower]

e.g. `etcdlite3 lease_keepalive 64` or `etcdlite3 put 1` (the put case's keys and values
as the suite's). Run from a checkout, it measures that checkout's build: running it in
turns from two checkouts (A B A B ...), with `etcd3` between, compares builds in one
window of a shared machine without the whole suite. Beside the figures: the load
average, whether the first endpoint (the one a lone client uses) was the leader (which
`--first` chooses: a write through a follower makes two more hops), and whether the
leader changed during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import grpc

from benchmarks.suite import Runner, parse_args
from benchmarks.targets import Target
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc


def _leads(endpoint: str) -> bool:
    with grpc.insecure_channel(endpoint) as ch:
        st = rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=5)
    return st.leader == st.header.member_id


def first_is(target: Target, leader: bool) -> None:
    """Reorder the target's members: the first one the leader (or a follower)."""
    deadline = time.monotonic() + 20
    while True:
        leads = [_leads(m.endpoint) for m in target.members]
        if any(leads):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("no leader")
        time.sleep(0.1)
    i = leads.index(True) if leader else leads.index(False)
    target.members.insert(0, target.members.pop(i))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("op")
    ap.add_argument("clients", type=int)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--first", choices=["any", "leader", "follower"], default="any",
                    help="make the first endpoint (a lone client's) the leader or a follower")
    args = ap.parse_args()
    runner = Runner(parse_args(["--duration", str(args.duration), "--reps", "1"]))
    work = Path(tempfile.mkdtemp(prefix="etcdlite-case-"))
    target = Target(args.target, work).start()
    try:
        time.sleep(1.0)
        if args.first != "any":
            first_is(target, args.first == "leader")
        params = dict(prefix=b"put/", keyspace=100_000, value_size=256) if args.op == "put" else {}
        before = target.status()
        r = runner.repeated(target, args.op, args.clients, **params)
        after = target.status()
        print(json.dumps({
            "target": args.target, "op": args.op, "clients": args.clients, "checkout": os.getcwd(),
            "ops_per_s": r["ops_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"],
            "server_cpu": r["server_cpu_cores"], "gen_cpu": r["gen_cpu_cores"], "other_cpu": r["other_cpu_cores"],
            "load1": round(os.getloadavg()[0], 2), "first_endpoint_leads": _leads(target.endpoints[0]),
            "leader_changed": len({s["leader"] for s in before + after}) > 1,
        }), flush=True)
    finally:
        target.stop()
        runner.pool.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
