"""Load generator: persistent worker processes, each running grpc.aio clients or the
lean ones (benchmarks/h2client.py for unary calls, benchmarks/h2watch.py for watch
streams; the task's "client": "h2").

The parent (benchmarks.suite) keeps a pool of `spawn`ed worker processes. For one
measurement every worker gets a task (operation, endpoints, number of clients), opens
its channels and prepares its clients, reports "ready"; the parent then sends one
common wall-clock start time, and every worker runs its clients for `duration`
seconds and reports completed operations, per-operation latencies, errors, and its
own CPU time (user+system of the whole process, gRPC's threads included) over the
measured window, so the suite can say how much of the machine the generator used.

Clients are coroutines; a worker spreads its clients over several channels (TCP
connections), and the channels round-robin over the target's endpoints.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import struct
import time
import traceback
from array import array
from collections import Counter

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    # one TCP connection per channel object (no sharing of subchannels between channels)
    ("grpc.use_local_subchannel_pool", 1),
]
RPC_TIMEOUT = 10.0


def put_key(prefix: bytes, i: int, size: int = 16) -> bytes:
    """A key of exactly `size` bytes: prefix + zero-padded number."""
    digits = size - len(prefix)
    return prefix + str(i).zfill(digits).encode()[-digits:]


def _error_name(e: BaseException) -> str:
    import grpc

    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {(e.details() or '')[:100]}"
    if isinstance(e, asyncio.TimeoutError):
        return "client timeout"
    return f"{type(e).__name__}: {str(e)[:100]}"


# ---------------------------------------------------------------------------
# inside a worker process


class _Worker:
    def __init__(self) -> None:
        import grpc  # noqa: F401  (imported here: only workers use grpc.aio)

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

    def channels(self, endpoints: list[str], n: int, offset: int):
        import grpc

        return [
            grpc.aio.insecure_channel(endpoints[(offset + i) % len(endpoints)], options=CHANNEL_OPTIONS)
            for i in range(n)
        ]

    # -- request/response operations ----------------------------------------

    async def setup_rr(self, t: dict):
        from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
        from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc

        n_clients = t["clients"]
        op = t["op"]
        n_chans = max(1, min(n_clients, t.get("channels", 8)))
        # unary calls may go through the lean client (benchmarks/h2client.py); streams stay on grpc.aio
        h2 = t.get("client") == "h2" and op != "lease_keepalive"
        KVStub, LeaseStub = rpc.KVStub, rpc.LeaseStub
        if h2:
            from benchmarks import h2client

            KVStub, LeaseStub = h2client.KVStub, h2client.LeaseStub
            eps = t["endpoints"]
            chans = await asyncio.wait_for(asyncio.gather(*(
                h2client.H2Channel.connect(eps[(t["index"] + i) % len(eps)]) for i in range(n_chans))), 15)
            self.h2chans = chans
        else:
            chans = self.channels(t["endpoints"], n_chans, t["index"])
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in chans)), 15)
            self.chans = chans
        rng = random.Random(os.getpid() ^ time.monotonic_ns())
        value = rng.randbytes(t.get("value_size", 256))
        keyspace = t.get("keyspace", 100_000)
        prefix = t.get("prefix", b"p/").encode() if isinstance(t.get("prefix"), str) else t.get("prefix", b"p/")
        key_size = t.get("key_size", 16)
        clients = []
        self.extra = Counter()

        for ci in range(n_clients):
            ch = chans[ci % len(chans)]
            if op in ("put", "put_seq"):
                stub = KVStub(ch)
                if op == "put":
                    def make(stub=stub):
                        async def call():
                            k = put_key(prefix, rng.randrange(keyspace), key_size)
                            await stub.Put(pb.PutRequest(key=k, value=value), timeout=RPC_TIMEOUT)
                        return call
                else:  # put_seq: this worker's share of keys [lo, hi), each key once
                    lo, hi = t["lo"], t["hi"]
                    it = iter(range(lo + ci, hi, n_clients))
                    def make(stub=stub, it=it):
                        async def call():
                            i = next(it, None)
                            if i is None:
                                return "stop"
                            await stub.Put(pb.PutRequest(key=put_key(prefix, i, key_size), value=value),
                                           timeout=RPC_TIMEOUT)
                        return call
                clients.append(make())
            elif op in ("range_l", "range_s"):
                stub = KVStub(ch)
                ser = op == "range_s"
                def make(stub=stub):
                    async def call():
                        k = put_key(prefix, rng.randrange(keyspace), key_size)
                        r = await stub.Range(pb.RangeRequest(key=k, serializable=ser), timeout=RPC_TIMEOUT)
                        if not r.kvs:
                            self.extra["missing"] += 1
                    return call
                clients.append(make())
            elif op == "txn_cas":
                stub = KVStub(ch)
                keys = [prefix + b"%d" % j for j in range(t["cas_keys"])]
                state = {k: (0, 0) for k in keys}  # key -> (value, mod_revision) last seen
                def make(stub=stub, state=state):
                    async def call():
                        k = rng.choice(keys)
                        v, mr = state[k]
                        req = pb.TxnRequest(
                            compare=[pb.Compare(key=k, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                                mod_revision=mr)],
                            success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"%d" % (v + 1)))],
                            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=k))],
                        )
                        r = await stub.Txn(req, timeout=RPC_TIMEOUT)
                        self.extra["attempts"] += 1
                        if r.succeeded:
                            self.extra["successes"] += 1
                            state[k] = (v + 1, r.header.revision)
                        else:
                            kvs = r.responses[0].response_range.kvs
                            state[k] = (int(kvs[0].value), kvs[0].mod_revision) if kvs else (0, 0)
                    return call
                clients.append(make())
            elif op == "lease_grant":
                stub = LeaseStub(ch)
                def make(stub=stub):
                    async def call():
                        await stub.LeaseGrant(pb.LeaseGrantRequest(TTL=t.get("ttl", 3600)), timeout=RPC_TIMEOUT)
                    return call
                clients.append(make())
            elif op == "lease_keepalive":
                stub = rpc.LeaseStub(ch)
                g = await stub.LeaseGrant(pb.LeaseGrantRequest(TTL=t.get("ttl", 3600)), timeout=RPC_TIMEOUT)
                stream = stub.LeaseKeepAlive()
                req = pb.LeaseKeepAliveRequest(ID=g.ID)
                def make(stream=stream, req=req):
                    async def call():
                        await stream.write(req)
                        r = await asyncio.wait_for(stream.read(), RPC_TIMEOUT)
                        if r is None or r.TTL <= 0:
                            raise RuntimeError("keep-alive stream ended or lease expired")
                    return call
                clients.append(make())
                self.streams = getattr(self, "streams", []) + [stream]
            else:
                raise ValueError(f"unknown op {op}")
        return clients

    async def run_rr(self, clients, duration: float):
        lat = array("d")
        errors: Counter = Counter()
        perf = time.perf_counter
        end = perf() + duration

        async def client(call):
            while True:
                t0 = perf()
                if t0 >= end:
                    return
                try:
                    if await call() == "stop":
                        return
                except Exception as e:  # noqa: BLE001 — counted, the run goes on
                    errors[_error_name(e)] += 1
                    await asyncio.sleep(0.01)
                    continue
                lat.append(perf() - t0)

        t0 = perf()
        await asyncio.gather(*(client(c) for c in clients))
        wall = perf() - t0
        return lat, errors, wall

    async def close(self):
        for s in getattr(self, "streams", []):
            s.cancel()
        self.streams = []
        self.watch_log = None
        for c in getattr(self, "h2chans", []):
            c.close()
        self.h2chans = []
        for c in getattr(self, "chans", []):
            await c.close()
        self.chans = []

    # -- watch -----------------------------------------------------------------

    async def setup_watch(self, t: dict):
        if t.get("client") == "h2":
            return await self.setup_watch_h2(t)
        from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
        from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc

        n_streams, per_stream = t["streams"], t["watchers_per_stream"]
        chans = self.channels(t["endpoints"], max(1, min(n_streams, 8)), t["index"])
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in chans)), 15)
        self.chans = chans
        key = t["key"]
        self.watch_calls = []
        for s in range(n_streams):
            call = rpc.WatchStub(chans[s % len(chans)]).Watch()
            for _ in range(per_stream):
                await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key)))
            created = 0
            while created < per_stream:
                r = await asyncio.wait_for(call.read(), 30)
                if r is None:
                    raise RuntimeError("watch stream closed during setup")
                if r.created:
                    created += 1
            self.watch_calls.append(call)
        self.streams = list(self.watch_calls)

    async def setup_watch_h2(self, t: dict):
        """The same streams through the lean receiver (benchmarks/h2watch.py): events are
        recorded as they are read from the sockets, into one EventLog."""
        from benchmarks import h2watch

        n_streams, per_stream = t["streams"], t["watchers_per_stream"]
        eps = t["endpoints"]
        log = h2watch.EventLog()
        self.watch_errors = Counter()
        conns = await asyncio.wait_for(asyncio.gather(*(
            h2watch.WatchChannel.connect(eps[(t["index"] + i) % len(eps)], on_events=log, errors=self.watch_errors)
            for i in range(max(1, min(n_streams, 8))))), 15)
        self.h2chans = conns
        streams = [conns[s % len(conns)].watch() for s in range(n_streams)]
        for st in streams:
            st.create(t["key"], count=per_stream)
        await asyncio.gather(*(st.wait_created(per_stream, timeout=30) for st in streams))
        if self.watch_errors:
            raise RuntimeError(f"watch setup: {dict(self.watch_errors)}")
        log.clear()
        self.watch_log = log

    async def run_watch(self, duration: float, expected: int | None = None):
        """Collect (mod_revision, sent_time embedded in the value, receive time) per event."""
        if getattr(self, "watch_log", None) is not None:
            return await self.run_watch_h2(duration, expected)
        revs, sent, recv = array("q"), array("d"), array("d")
        errors: Counter = Counter()

        async def reader(call):
            try:
                while True:
                    r = await call.read()
                    if r is None:
                        return
                    now = time.time()
                    for ev in r.events:
                        revs.append(ev.kv.mod_revision)
                        sent.append(struct.unpack_from("d", ev.kv.value)[0])
                        recv.append(now)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                errors[_error_name(e)] += 1

        tasks = [asyncio.ensure_future(reader(c)) for c in self.watch_calls]
        # until every expected event arrived, or the deadline (late events count as lost)
        t0 = time.monotonic()
        end = t0 + duration
        while time.monotonic() < end and (expected is None or len(recv) < expected):
            await asyncio.sleep(0.05)
        self.watch_wall = time.monotonic() - t0
        for tk in tasks:
            tk.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return revs, sent, recv, errors

    async def run_watch_h2(self, duration: float, expected: int | None = None):
        log = self.watch_log
        t0 = time.monotonic()
        end = t0 + duration
        while time.monotonic() < end and (expected is None or len(log) < expected):
            await asyncio.sleep(0.05)
        self.watch_wall = time.monotonic() - t0
        return log.revs, log.sent, log.recv, Counter(self.watch_errors)


def worker_main(conn) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it terminates us
    w = _Worker()
    loop = w.loop
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        t = msg
        try:
            if t["op"] == "watch":
                loop.run_until_complete(w.setup_watch(t))
            else:
                clients = loop.run_until_complete(w.setup_rr(t))
            conn.send(("ready", None))
            go = conn.recv()
            if go is None:
                loop.run_until_complete(w.close())
                continue
            delay = go - time.time()
            if delay > 0:
                time.sleep(delay)
            c0 = os.times()
            if t["op"] == "watch":
                revs, sent, recv, errors = loop.run_until_complete(w.run_watch(t["duration"], t.get("expected")))
                c1 = os.times()
                res = {"revs": revs, "sent": sent, "recv": recv, "errors": dict(errors), "wall": w.watch_wall}
            else:
                lat, errors, wall = loop.run_until_complete(w.run_rr(clients, t["duration"]))
                c1 = os.times()
                res = {"lat": lat, "errors": dict(errors), "wall": wall, "extra": dict(w.extra)}
            res["cpu"] = (c1.user - c0.user) + (c1.system - c0.system)
            loop.run_until_complete(w.close())
            conn.send(("done", res))
        except Exception:  # noqa: BLE001
            try:
                loop.run_until_complete(w.close())
            except Exception:  # noqa: BLE001
                pass
            conn.send(("error", traceback.format_exc(limit=3)))


# ---------------------------------------------------------------------------
# in the parent


class WorkerPool:
    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.workers = []
        for _ in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(b,), daemon=True)
            p.start()
            self.workers.append((p, a))

    def __len__(self) -> int:
        return len(self.workers)

    def run(self, tasks: list[dict], timeout: float = 120.0, during=None) -> list[dict]:
        """Run one task per worker (len(tasks) <= pool size), start them together.

        `during(start_wall)` runs in the parent while the workers measure (the watch
        writer). Returns the workers' results; raises on a worker error."""
        used = self.workers[: len(tasks)]
        for i, ((_, conn), t) in enumerate(zip(used, tasks)):
            conn.send(dict(t, index=i))
        errors, ready = [], []
        for _, conn in used:
            if not conn.poll(timeout):
                raise RuntimeError("load worker did not get ready in time")
            kind, payload = conn.recv()
            if kind == "ready":
                ready.append(conn)
            else:
                errors.append(payload)
        if errors:
            for conn in ready:  # they wait for "go": release them (None = close, next task)
                conn.send(None)
            raise RuntimeError("load worker setup failed: " + errors[0].strip().splitlines()[-1])
        start = time.time() + 0.2
        for _, conn in used:
            conn.send(start)
        extra = during(start) if during else None
        results = []
        for _, conn in used:
            if not conn.poll(timeout + max(t["duration"] for t in tasks)):
                raise RuntimeError("load worker did not finish in time")
            kind, payload = conn.recv()
            if kind != "done":
                raise RuntimeError("load worker failed: " + payload.strip().splitlines()[-1])
            results.append(payload)
        if during:
            return results, extra
        return results

    def close(self) -> None:
        for p, conn in self.workers:
            try:
                conn.send(None)
            except Exception:  # noqa: BLE001
                pass
        for p, _ in self.workers:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
