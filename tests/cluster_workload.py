"""Shared code for the 3-member fault tests (tests/test_cluster_faults.py):
building a cluster (optionally with a FaultProxy on every peer link), asking
members who leads, waiting for revisions to converge, a put workload that
records what was acknowledged, and a watch recorder.

Nothing here sleeps in place of waiting for a condition: every wait polls
with a deadline (``wait_until``) and fails with a message when it passes.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time

import grpc

from etcdlite.config import member_id
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from harness.etcd_client import Client, wait_until
from harness.faultproxy import FaultProxy, Partitioner
from harness.procs import Member, kill_all, start_etcdlite_cluster

# client-side deadline of one workload request; shorter than the server's
# 7 s request timeout so that a client stuck on a dead/stopped member moves on
OP_TIMEOUT = 3.0
# how long a leader election may take, at most, in these tests (1-2 s
# election timeout, plus a few failed rounds and a loaded 2-core machine)
ELECTION_DEADLINE = 20.0


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


# --------------------------------------------------------------------------- cluster


class Cluster:
    """3 (or n) etcdlite members; ``part`` is a Partitioner when proxied."""

    def __init__(self, members: list[Member], part: Partitioner | None):
        self.members = members
        self.part = part
        # etcdlite derives member IDs from the peer URLs and the cluster token
        self.ids = {m.name: member_id([m.peer_url], "etcd-cluster") for m in members}
        self.by_id = {v: m for m, v in zip(members, self.ids.values())}
        self.stopped: set[str] = set()

    def __iter__(self):
        return iter(self.members)

    def id_of(self, m: Member) -> int:
        return self.ids[m.name]

    # -- status -----------------------------------------------------------

    @staticmethod
    def status(m: Member, timeout: float = 1.0) -> pb.StatusResponse | None:
        try:
            with grpc.insecure_channel(m.endpoint) as ch:
                return rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=timeout)
        except grpc.RpcError:
            return None

    def agreed_leader(self, among: list[Member], exclude: Member | None = None) -> Member | None:
        """The leader every member of `among` reports, if they all report the
        same one, it is one of `among` and not `exclude`; else None."""
        leaders = set()
        for m in among:
            st = self.status(m)
            if st is None or not st.leader:
                return None
            leaders.add(st.leader)
        if len(leaders) != 1:
            return None
        leader = self.by_id.get(leaders.pop())
        if leader is None or leader not in among or leader is exclude:
            return None
        return leader

    def wait_leader(self, among: list[Member] | None = None, exclude: Member | None = None,
                    timeout: float = ELECTION_DEADLINE) -> Member:
        among = list(among or self.members)
        return wait_until(lambda: self.agreed_leader(among, exclude), timeout,
                          interval=0.05, what=f"a leader agreed by {[m.name for m in among]}"
                          + (f" other than {exclude.name}" if exclude else ""))

    def wait_converged(self, timeout: float = 30.0) -> int:
        """Wait until every member reports the same revision and has applied
        all it committed, twice in a row; return that revision."""
        last: list = [None]

        def same():
            sts = [self.status(m) for m in self.members]
            if any(s is None for s in sts):
                last[0] = None
                return None
            revs = {s.header.revision for s in sts}
            applied = all(s.raftAppliedIndex >= s.raftIndex for s in sts)
            if len(revs) != 1 or not applied:
                last[0] = None
                return None
            rev = revs.pop()
            if last[0] == rev:
                return rev
            last[0] = rev
            return None

        try:
            return wait_until(same, timeout, interval=0.2, what="members to converge on one revision")
        except AssertionError:
            detail = []
            for m in self.members:
                st = self.status(m)
                detail.append(f"{m.name}: " + ("no answer" if st is None else
                              f"rev={st.header.revision} commit={st.raftIndex} "
                              f"applied={st.raftAppliedIndex} leader={st.leader:x}"))
            raise AssertionError("members did not converge: " + "; ".join(detail)) from None

    def hashkv(self, revision: int) -> dict[str, int]:
        out = {}
        for m in self.members:
            with Client(m.endpoint) as c:
                out[m.name] = c.maintenance.HashKV(pb.HashKVRequest(revision=revision), timeout=10).hash
        return out

    def assert_hashkv_equal(self) -> int:
        rev = self.wait_converged()
        hashes = self.hashkv(rev)
        assert len(set(hashes.values())) == 1, f"HashKV at revision {rev} differs: {hashes}"
        return rev

    # -- process control ----------------------------------------------------

    def sigstop(self, m: Member) -> None:
        os.killpg(m.pid, signal.SIGSTOP)
        self.stopped.add(m.name)

    def sigcont(self, m: Member) -> None:
        if m.alive:
            os.killpg(m.pid, signal.SIGCONT)
        self.stopped.discard(m.name)

    def cleanup(self) -> None:
        for m in self.members:
            if m.name in self.stopped:
                try:
                    self.sigcont(m)
                except (ProcessLookupError, PermissionError):
                    pass
        if self.part is not None:
            for proxy in self.part.links.values():
                try:
                    proxy.close()
                except Exception:
                    pass
        kill_all(self.members)


def make_cluster(tmp_path, registry, size: int = 3, proxied: bool = False,
                 mode: str = "reset", name: str = "m") -> Cluster:
    """start_etcdlite_cluster (harness/procs.py) with one more step: when
    `proxied`, a FaultProxy for every directed pair (i -> j, forwarding to
    j's peer port), given to member i as its dial URL for j."""
    links: dict = {}

    def add_proxies(members: list[Member]) -> None:
        for a in members:
            dial = []
            for b in members:
                if a is b:
                    continue
                proxy = FaultProxy(0, b.peer_port, mode=mode, name=f"{a.name}->{b.name}")
                links[(a.name, b.name)] = proxy
                dial.append(f"{b.name}=http://127.0.0.1:{proxy.port}")
            a.extra_flags["experimental_peer_dial_urls"] = ",".join(dial)

    try:
        members = start_etcdlite_cluster(tmp_path, size, registry, name=name,
                                         before_launch=add_proxies if proxied else None)
    except BaseException:
        for proxy in links.values():
            try:
                proxy.close()
            except Exception:
                pass
        raise
    return Cluster(members, Partitioner(links, mode=mode) if proxied else None)


# --------------------------------------------------------------------------- errors


PRE_APPLY_TEXTS = (
    "etcdserver: no leader",            # pysyncobj had no leader to send it to: never appended
    "etcdserver: not capable",
    "etcdserver: too many requests",    # pysyncobj's queue was full: never appended
    "failed to connect to all addresses",  # the request never left this process
    "Connection refused",
)


def is_pre_apply(err: grpc.RpcError) -> bool:
    """True only for errors that prove the request was not applied. Everything
    else (timeouts, 'leader changed', a connection lost mid-call) may have been."""
    code, details = err.code(), err.details() or ""
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return True
    return code == grpc.StatusCode.UNAVAILABLE and any(t in details for t in PRE_APPLY_TEXTS)


# --------------------------------------------------------------------------- client threads


class ClientThreads:
    """`threads` daemon threads, each running `self._run(i)` (defined by the
    subclass) until `stop()`; `self.lock` guards what they record."""

    def __init__(self, threads: int, name: str):
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True, name=f"{name}-{i}")
                        for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(OP_TIMEOUT + 5)
        assert not any(t.is_alive() for t in self.threads), "a load thread did not stop"


# --------------------------------------------------------------------------- put workload


class PutLoad(ClientThreads):
    """`threads` client threads put unique keys under `prefix`. Thread i starts
    bound to members[i % n] and moves to the next member after an error. Every
    acknowledged put is recorded as key -> (value, revision, ack time)."""

    def __init__(self, members: list[Member], prefix: str, threads: int = 6, pace: float = 0.0):
        self.members = members
        self.prefix = prefix
        self.pace = pace
        self.acked: dict[bytes, tuple[bytes, int, float]] = {}
        self.errors: list[tuple[float, str, str]] = []
        super().__init__(threads, f"put-{prefix}")

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def acked_after(self, t0: float) -> int:
        with self.lock:
            return sum(1 for _, _, t in self.acked.values() if t > t0)

    def _run(self, i: int) -> None:
        idx = i % len(self.members)
        client = Client(self.members[idx].endpoint)
        seq = 0
        try:
            while not self.stop_event.is_set():
                key = f"{self.prefix}/t{i}/{seq:06d}".encode()
                value = f"v{i}-{seq}-{time.monotonic_ns()}".encode()
                seq += 1
                try:
                    resp = client.kv.Put(pb.PutRequest(key=key, value=value), timeout=OP_TIMEOUT)
                except grpc.RpcError as err:
                    with self.lock:
                        self.errors.append((time.monotonic(), self.members[idx].name,
                                            f"{err.code().name}: {err.details()}"))
                    client.close()
                    idx = (idx + 1) % len(self.members)
                    client = Client(self.members[idx].endpoint)
                    self.stop_event.wait(0.05)   # back off a little before the retry
                    continue
                now = time.monotonic()
                with self.lock:
                    self.acked[key] = (value, resp.header.revision, now)
                if self.pace:
                    self.stop_event.wait(self.pace)
        finally:
            client.close()

    def longest_gap(self, t_fault: float) -> tuple[float, float, float]:
        """(longest gap between consecutive acknowledgements from the last one
        before t_fault on, its start, its end) - the unavailability window."""
        with self.lock:
            times = sorted(t for _, _, t in self.acked.values())
        before = [t for t in times if t <= t_fault]
        start = before[-1] if before else t_fault
        seq = [start] + [t for t in times if t > start]
        best = (0.0, start, start)
        for a, b in zip(seq, seq[1:]):
            if b - a > best[0]:
                best = (b - a, a, b)
        return best


def read_prefix(m: Member, prefix: bytes, serializable: bool) -> dict[bytes, tuple[bytes, int]]:
    with Client(m.endpoint) as c:
        resp = c.kv.Range(pb.RangeRequest(key=prefix, range_end=prefix_end(prefix),
                                          serializable=serializable), timeout=15)
    return {kv.key: (kv.value, kv.mod_revision) for kv in resp.kvs}


def check_acked_everywhere(cluster: Cluster, prefix: bytes,
                           acked: dict[bytes, tuple[bytes, int, float]]) -> None:
    """Every acknowledged put is on every member (serializable read of each
    member, after revisions converged) with the value and mod_revision it was
    acknowledged with; a linearizable read agrees."""
    cluster.wait_converged()
    for m in cluster.members:
        got = read_prefix(m, prefix, serializable=True)
        missing = [k for k in acked if k not in got]
        assert not missing, (f"{m.name}: {len(missing)} of {len(acked)} acknowledged puts missing, "
                             f"e.g. {sorted(missing)[:5]}")
        changed = [(k, acked[k][:2], got[k]) for k in acked if got[k] != acked[k][:2]]
        assert not changed, f"{m.name}: acknowledged puts differ (key, acked, stored): {changed[:5]}"
    lin = read_prefix(cluster.members[0], prefix, serializable=False)
    assert all(lin.get(k) == v[:2] for k, v in acked.items())


def report(line: str) -> None:
    """Print, and append to $ETCDLITE_FAULT_REPORT when set."""
    print(line)
    path = os.environ.get("ETCDLITE_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


# --------------------------------------------------------------------------- watch


class WatchRecorder:
    """One Watch stream on one member, from `start_revision`, on a prefix;
    events are collected as (mod_revision, index in its revision, type, key,
    value) in arrival order."""

    def __init__(self, m: Member, prefix: bytes, start_revision: int):
        self.member = m
        self.prefix = prefix
        self.start_revision = start_revision
        self.events: list[tuple[int, int, int, bytes, bytes]] = []
        self.canceled: pb.WatchResponse | None = None
        self.error: grpc.RpcError | None = None
        self.created = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self._requests: queue.Queue = queue.Queue()
        self._channel = grpc.insecure_channel(m.endpoint)
        self._call = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{m.name}")
        self._thread.start()

    def _run(self) -> None:
        create = pb.WatchCreateRequest(key=self.prefix, range_end=prefix_end(self.prefix),
                                       start_revision=self.start_revision)
        self._requests.put(pb.WatchRequest(create_request=create))
        try:
            self._call = rpc.WatchStub(self._channel).Watch(iter(self._requests.get, None))
            last_rev, idx = None, 0
            for resp in self._call:
                if resp.created:
                    self.created.set()
                if resp.canceled:
                    self.canceled = resp
                    return
                with self.lock:
                    for ev in resp.events:
                        rev = ev.kv.mod_revision
                        idx = idx + 1 if rev == last_rev else 0
                        last_rev = rev
                        self.events.append((rev, idx, ev.type, ev.kv.key, ev.kv.value))
        except grpc.RpcError as err:
            self.error = err
        finally:
            self.done.set()

    def snapshot(self) -> list:
        with self.lock:
            return list(self.events)

    @property
    def last_revision(self) -> int:
        with self.lock:
            return self.events[-1][0] if self.events else self.start_revision - 1

    def wait_created(self, timeout: float = 10.0) -> None:
        wait_until(lambda: self.created.is_set() or self.done.is_set(), timeout,
                   what=f"watch on {self.member.name} to be created")
        assert self.created.is_set(), f"watch on {self.member.name} failed: {self.error or self.canceled}"

    def close(self) -> None:
        self._requests.put(None)
        if self._call is not None:
            self._call.cancel()
        self._channel.close()
        self._thread.join(5)
