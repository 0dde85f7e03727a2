"""The writer side of the watch benchmarks: puts at a steady rate whose values carry their send
time, so a receiver (benchmarks.load's, benchmarks.h2watch's, or Go etcdctl's in benchmarks.gowatch)
can tell each event's delivery latency. Its own module because the suite and gowatch both use it."""

from __future__ import annotations

import struct
import time


def binary_stamp(sent: float) -> bytes:
    """A 64-byte value carrying its send time (the Python receivers unpack it)."""
    return struct.pack("d", sent) + b"x" * 56


def watch_writer(endpoint: str, key: bytes, start: float, rate: float, dur: float, stamp=binary_stamp):
    """Put values carrying their send time (`stamp(sent)`) at `rate`/s from start + 0.5 s;
    returns ({revision: ack wall time}, put latencies)."""
    import grpc

    from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
    from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc

    acks, lat = {}, []
    with grpc.insecure_channel(endpoint) as ch:
        kv = rpc.KVStub(ch)
        kv.Range(pb.RangeRequest(key=key), timeout=10)  # connect before the clock starts
        n = int(rate * dur)
        first = start + 0.5
        for i in range(n):
            delay = first + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            sent = time.time()
            try:
                r = kv.Put(pb.PutRequest(key=key, value=stamp(sent)), timeout=10)
            except grpc.RpcError:
                continue
            now = time.time()
            acks[r.header.revision] = now
            lat.append(now - sent)
    return acks, lat
