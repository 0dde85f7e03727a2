"""The systems under test, each on free 127.0.0.1 ports with its data in a temp dir."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import grpc

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from harness.procs import PYTHON, REPO, Member, Registry, free_port, start_cluster, start_etcdlite_cluster

TARGETS = {
    # name: (kind, members, label)
    "etcdlite1": ("etcdlite", 1, "etcdlite 1"),
    "etcd1": ("etcd", 1, "etcd 1"),
    "etcdlite3": ("etcdlite", 3, "etcdlite 3"),
    "etcd3": ("etcd", 3, "etcd 3"),
    "bare": ("bare", 1, "bare gRPC"),  # on etcdlite's gRPC server (grpclite)
    "bare_grpcio": ("bare", 1, "bare grpc.aio"),  # on grpcio's
    # bare with etcdlite's durability and nothing else: each turn's Puts answered after one
    # fdatasync (bare_server --sync); the ceiling of a server that syncs before it answers
    "bare_sync": ("bare", 1, "bare gRPC + fdatasync"),
    # what the syncs cost: etcdlite without them (etcd 3.5's flag; a power loss on a
    # majority can lose acknowledged writes), measured beside etcdlite with them
    "etcdlite1_nofsync": ("etcdlite", 1, "etcdlite 1 --unsafe-no-fsync"),
    "etcdlite3_nofsync": ("etcdlite", 3, "etcdlite 3 --unsafe-no-fsync"),
    # the leader's journal sync in a thread (--experimental-raft-sync=thread): not in a
    # default run; `--targets etcdlite1,etcdlite1_syncthread --only put` compares it
    "etcdlite1_syncthread": ("etcdlite", 1, "etcdlite 1, sync in a thread"),
    "etcdlite3_syncthread": ("etcdlite", 3, "etcdlite 3, sync in a thread"),
    # peer (Raft) traffic in TLS with client certificates, beside the peer secret: not in a
    # default run; `--targets etcdlite3,etcdlite3_peertls --only put` compares it
    "etcdlite3_peertls": ("etcdlite", 3, "etcdlite 3, peer TLS"),
}
# command-line flags of a target's members beyond the common ones
FLAGS = {
    "etcdlite1_nofsync": {"unsafe_no_fsync": True},
    "etcdlite3_nofsync": {"unsafe_no_fsync": True},
    "etcdlite1_syncthread": {"experimental_raft_sync": "thread"},
    "etcdlite3_syncthread": {"experimental_raft_sync": "thread"},
}


def peer_tls_flags(tmp: Path) -> dict:
    """A peer CA and one certificate (CN etcd-peer, 127.0.0.1) every member
    serves and presents: etcd's mutual peer TLS."""
    from apiserver.auth.pki import CA

    ca = CA(tmp / "pki", name="peer-ca", cn="etcd-peer-ca")
    issued = ca.issue("peer", "etcd-peer", server=True, client=True, ips=("127.0.0.1",))
    return {"peer_cert_file": str(issued.cert), "peer_key_file": str(issued.key),
            "peer_trusted_ca_file": str(ca.cert_path), "peer_client_cert_auth": True}


def https_peers(members: list[Member]) -> None:
    """start_cluster's before_launch: the members' peer URLs made https://."""
    for m in members:
        m.peer_scheme = "https"
    cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for m in members:
        m.initial_cluster = cluster


class Target:
    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.kind, self.size, self.label = TARGETS[name]
        self.workdir = workdir
        self.registry = Registry()
        self.members: list[Member] = []
        self.bare: subprocess.Popen | None = None
        self.bare_port = 0
        self.starts = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> "Target":
        self.starts += 1
        tmp = self.workdir / f"{self.name}-{self.starts}"
        tmp.mkdir(parents=True, exist_ok=True)
        flags = FLAGS.get(self.name, {})
        if self.kind == "etcdlite":
            if self.size == 1:
                self.members = [self.registry.start_etcdlite(tmp, name="lite0", log_level="warn", **flags)]
            else:
                before_launch = None
                if self.name.endswith("_peertls"):
                    flags = dict(flags, **peer_tls_flags(tmp))
                    before_launch = https_peers
                self.members = start_etcdlite_cluster(tmp, self.size, self.registry, name="lite",
                                                      log_level="warn", before_launch=before_launch, **flags)
        elif self.kind == "etcd":
            if self.size == 1:
                self.members = [self.registry.start_real_etcd(tmp, name="etcd0")]
            else:
                self.members = start_cluster("etcd", tmp, self.size, self.registry, name="etcd")
        else:
            self.bare_port = free_port()
            log = open(tmp / "bare.log", "ab")
            self.bare = subprocess.Popen(
                [PYTHON, "-m", "benchmarks.bare_server", "--port", str(self.bare_port),
                 "--server", "grpcio" if self.name == "bare_grpcio" else "h2",
                 *(["--sync", str(tmp / "bare.journal")] if self.name == "bare_sync" else [])],
                cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            deadline = time.monotonic() + 20
            while True:
                try:
                    with grpc.insecure_channel(self.endpoints[0]) as ch:
                        rpc.KVStub(ch).Put(pb.PutRequest(key=b"ready", value=b"1"), timeout=1)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline or self.bare.poll() is not None:
                        self.stop()
                        raise RuntimeError("bare gRPC server did not start")
                    time.sleep(0.1)
        return self

    def stop(self) -> None:
        try:
            self.registry.cleanup()
        finally:
            self.members = []
            if self.bare is not None:
                if self.bare.poll() is None:
                    self.bare.kill()
                self.bare.wait(timeout=10)
                self.bare = None

    # -- facts -----------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        if self.kind == "bare":
            return [f"127.0.0.1:{self.bare_port}"]
        return [m.endpoint for m in self.members]

    @property
    def argv(self) -> list[str]:
        """The first member's command line (what the results were measured on)."""
        return self.members[0].argv() if self.members else []

    @property
    def pids(self) -> list[int]:
        if self.kind == "bare":
            return [self.bare.pid] if self.bare else []
        return [m.pid for m in self.members if m.pid]

    @property
    def data_dirs(self) -> list[Path]:
        return [m.data_dir for m in self.members]

    def status(self) -> list[dict]:
        """Status of every member: leader, raft term (None where it fails)."""
        out = []
        for ep in self.endpoints:
            try:
                with grpc.insecure_channel(ep) as ch:
                    st = rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=5)
                out.append({"endpoint": ep, "leader": st.leader, "term": st.raftTerm})
            except grpc.RpcError as e:
                out.append({"endpoint": ep, "leader": None, "term": None, "error": e.code().name})
        return out


def proc_cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_rss(pid: int) -> dict:
    """VmRSS and RssAnon in bytes."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
                total += st.st_blocks * 512  # allocated, as du
            except OSError:
                pass
    return total


# the kinds of /proc/stat's first line, in order
_CPU_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu_seconds() -> dict[str, float]:
    """CPU seconds the whole machine spent (all cores), by /proc/stat's kind; {} if unreadable."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    return {kind: v / tick for kind, v in zip(_CPU_KINDS, f)}


def machine_busy_seconds(seconds: dict[str, float]) -> float:
    """Of machine_cpu_seconds(), the busy part: all but idle and iowait."""
    return sum(seconds.values()) - seconds.get("idle", 0.0) - seconds.get("iowait", 0.0)
