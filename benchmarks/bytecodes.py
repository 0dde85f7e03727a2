"""Python bytecodes executed per put, per function: a cost that a busy shared machine does not blur.

On the 2 shared cores the put benchmark's figures move by 2-3x from run to run while other
work runs; the bytecodes a put executes do not (bar the timer-driven Raft ticks, which follow
wall time). The client (benchmarks.h2client) and the server (the bare KV server on grpclite, or
a one-member etcdlite) run in one event loop; every bytecode that loop runs while N sequential
puts are made is counted (sys.settrace opcode events), by function. Compare two trees by running
this from each:

    PYTHONPATH=$TREE python benchmarks/bytecodes.py --target etcdlite [--puts 300] [--top 40]

The figures, against the code before the limits of issue 24: benchmarks/why.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import collections
import os
import shutil
import socket
import sys
import tempfile

from benchmarks.h2client import H2Channel, KVStub
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _bare() -> tuple[int, object]:
    from benchmarks.bare_server import BareKV
    from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
    from grpclite import GrpcServer

    server = GrpcServer()
    rpc.add_KVServicer_to_server(BareKV(), server)
    port = await server.listen("127.0.0.1", 0)
    await server.start()
    return port, lambda: server.stop(0)


async def _etcdlite() -> tuple[int, object]:
    from etcdlite.config import MemberConfig
    from etcdlite.server.member import Member

    client, peer = _free_port(), _free_port()
    data = tempfile.mkdtemp(prefix="bytecodes-")
    cfg = MemberConfig(name="m", data_dir=os.path.join(data, "m"),
                       listen_client_urls=[f"http://127.0.0.1:{client}"],
                       advertise_client_urls=[f"http://127.0.0.1:{client}"],
                       listen_peer_urls=[f"http://127.0.0.1:{peer}"],
                       initial_advertise_peer_urls=[f"http://127.0.0.1:{peer}"])
    member = Member(cfg)
    await member.start()

    async def stop() -> None:
        await member.stop()
        shutil.rmtree(data, ignore_errors=True)

    return client, stop


def count(target: str, puts: int, warmup: int = 1000) -> collections.Counter:
    """Bytecodes per function over `puts` sequential puts (after `warmup` of them)."""
    counts: collections.Counter = collections.Counter()

    def tracer(frame, event, arg):
        frame.f_trace_opcodes = True
        code = frame.f_code
        name = f"{os.path.basename(code.co_filename)}:{code.co_name}"

        def each(frame, event, arg):
            if event == "opcode":
                counts[name] += 1
            return each
        return each

    loop = asyncio.new_event_loop()
    tracing = False
    run_once = loop._run_once

    def traced_run_once():  # every callback the loop runs, the server's and the client's
        if not tracing:
            return run_once()
        sys.settrace(tracer)
        try:
            return run_once()
        finally:
            sys.settrace(None)

    loop._run_once = traced_run_once

    async def drive() -> None:
        nonlocal tracing
        port, stop = await (_bare() if target == "bare" else _etcdlite())
        kv = KVStub(await H2Channel.connect(f"127.0.0.1:{port}"))
        for i in range(warmup):
            await kv.Put(pb.PutRequest(key=b"k%015d" % i, value=b"v" * 256))
        # the garbage collector off while counting: its callbacks (hypothesis registers one in a
        # test run) would count whenever a collection happens to fall in the traced puts
        gc.collect()
        gc.disable()
        tracing = True
        try:
            for i in range(warmup, warmup + puts):
                await kv.Put(pb.PutRequest(key=b"k%015d" % i, value=b"v" * 256))
        finally:
            tracing = False
            gc.enable()
        await stop()

    try:
        loop.run_until_complete(drive())
    finally:
        loop.close()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=["bare", "etcdlite"], default="etcdlite")
    ap.add_argument("--puts", type=int, default=300)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    counts = count(args.target, args.puts)
    print(f"bytecodes per put: {sum(counts.values()) / args.puts:.1f} ({args.target}, {args.puts} puts, 1 client)")
    for name, n in counts.most_common(args.top):
        print(f"{n / args.puts:8.1f}  {name}")


if __name__ == "__main__":
    main()
