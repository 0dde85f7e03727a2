"""Watch delivery latency seen by the Go client: `etcdctl watch -i`.

One `etcdctl watch --interactive` process is one gRPC stream (the Go client puts
every watch of a client on one stream), fed `watch KEY` lines on stdin, one per
watcher; it prints every WatchResponse as a JSON line. A reader thread here
timestamps each chunk of output as it arrives; the lines are parsed afterwards,
so parsing never delays a timestamp. The writer puts values that carry their
send time as text.

Why a second client: with 1,000 watchers, one Python grpc.aio receiver decodes
only a few thousand responses per second, so the Python figures measure the
receiver as much as the server (the real etcd shows the same p99s with it).
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import subprocess
import threading
import time

import grpc

from benchmarks.watch_writer import watch_writer
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc

READY = b"ready"


def _text_stamp(sent: float) -> bytes:
    """A value carrying its send time as text (etcdctl prints values as they are)."""
    return b"%.6f " % sent + b"x" * 40


class _Receivers:
    def __init__(self, etcdctl: str, endpoints: list[str], streams: int, per: int, key: bytes):
        env = dict(os.environ, ETCDCTL_API="3")
        self.procs = []
        for i in range(streams):
            p = subprocess.Popen(
                [etcdctl, "--endpoints", endpoints[i % len(endpoints)], "-w", "json", "watch", "-i"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            p.stdin.write(b"watch %s\n" % key * per)
            p.stdin.flush()  # stdin stays open: etcdctl -i exits at its end
            self.procs.append(p)
        self.chunks: dict[int, list[tuple[float, bytes]]] = {p.stdout.fileno(): [] for p in self.procs}
        self.nlines = 0  # complete lines so far (one per WatchResponse)
        self.stopped = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        sel = selectors.DefaultSelector()
        for p in self.procs:
            os.set_blocking(p.stdout.fileno(), False)
            sel.register(p.stdout.fileno(), selectors.EVENT_READ)
        while not self.stopped:
            for k, _ in sel.select(0.05):
                try:
                    data = os.read(k.fd, 1 << 20)
                except BlockingIOError:
                    continue
                if data:
                    self.chunks[k.fd].append((time.time(), data))
                    self.nlines += data.count(b"\n")
                else:
                    sel.unregister(k.fd)
        sel.close()

    def lines(self):
        """(receive time, line) of every complete line so far, per process."""
        out = []
        for chunks in list(self.chunks.values()):
            buf = b""
            for ts, data in list(chunks):
                buf += data
                *done, buf = buf.split(b"\n")
                out.extend((ts, line) for line in done if line)
        return out

    def cpu_seconds(self) -> float:
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for p in self.procs:
            try:
                with open(f"/proc/{p.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        return total

    def close(self) -> None:
        self.stopped = True
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait(timeout=10)
            p.stdin.close()
            p.stdout.close()
        self.thread.join(timeout=5)


def _events(line: bytes):
    """(mod_revision, value) of each event in one JSON WatchResponse line."""
    try:
        resp = json.loads(line)
    except ValueError:
        return []
    out = []
    for ev in resp.get("Events") or []:
        kv = ev.get("kv") or {}
        out.append((int(kv.get("mod_revision", 0)), base64.b64decode(kv.get("value", ""))))
    return out


def run(etcdctl: str, watch_endpoints: list[str], write_endpoint: str, streams: int, per: int,
        key: bytes, rate: float, dur: float) -> dict:
    """Measure; returns latencies in seconds (send_lat, ack_lat), counts and CPU."""
    recv = _Receivers(etcdctl, watch_endpoints, streams, per, key)
    try:
        with grpc.insecure_channel(write_endpoint) as ch:
            kv = rpc.KVStub(ch)
            # ready when one put reached every watcher (watch creation is asynchronous)
            deadline = time.monotonic() + 60
            while True:
                r = kv.Put(pb.PutRequest(key=key, value=READY), timeout=10)
                time.sleep(0.3)
                seen = sum(1 for _, line in recv.lines() for rev, v in _events(line)
                           if rev == r.header.revision)
                if seen >= streams * per:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcdctl watchers not ready after 60 s ({seen}/{streams * per})")
        base = recv.nlines
        cpu0, t0 = recv.cpu_seconds(), time.monotonic()
        acks, put_lat = watch_writer(write_endpoint, key, time.time() - 0.2, rate, dur, stamp=_text_stamp)
        expected = len(acks) * streams * per
        # one response line per watcher per put (events not received within 10 s count as lost)
        deadline = time.monotonic() + 10
        while recv.nlines - base < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        wall = time.monotonic() - t0
        cpu = recv.cpu_seconds() - cpu0
        lines = recv.lines()
    finally:
        recv.close()
    send_lat, ack_lat = [], []
    for ts, line in lines:
        for rev, value in _events(line):
            if rev not in acks:
                continue
            send_lat.append(ts - float(value.split(b" ", 1)[0]))
            ack_lat.append(ts - acks[rev])
    return {"send_lat": send_lat, "ack_lat": ack_lat, "put_lat": put_lat, "puts": len(acks),
            "expected": expected, "received": len(send_lat),
            "receiver_cpu_cores": round(cpu / wall, 2) if wall > 0 else None}
