"""Cluster sizes, `etcdlite cluster up`, and leases across a leader change."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest

from harness.etcd_client import Client, error_of, leader_of, wait_until
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness.procs import REPO, run_etcdctl, start_etcdlite_cluster

pytestmark = pytest.mark.process


def test_five_members_survive_two_failures(procs, tmp_path):
    members = start_etcdlite_cluster(tmp_path, 5, procs)
    leader = leader_of(members)
    followers = [m for m in members if m is not leader]
    followers[0].kill()
    followers[1].kill()
    with Client(leader.endpoint) as c:
        rev = c.put(b"five", b"still").header.revision
    followers[2].kill()  # now 2 of 5: no quorum, writes must fail, not pretend
    with Client(leader.endpoint) as c:
        code, _ = error_of(lambda: c.kv.Put(pb.PutRequest(key=b"five", value=b"lost"), timeout=15))
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    for m in followers[:3]:
        m.restart()
    # the timed-out write's outcome is unknown (it may commit once the quorum
    # is back, as in etcd); the acknowledged one is there, and all agree
    seen = set()
    for m in members:
        with Client(m.endpoint) as c:
            wait_until(lambda: c.get(b"five", serializable=True).header.revision >= rev, 20,
                       what="the write on every member")
            assert c.get(b"five", revision=rev).kvs[0].value == b"still"
            seen.add(tuple((kv.value, kv.mod_revision) for kv in c.get(b"five").kvs))
    assert len(seen) == 1


def test_lease_outlives_a_leader_change(procs, tmp_path):
    members = start_etcdlite_cluster(tmp_path, 3, procs)
    leader = leader_of(members)
    other = next(m for m in members if m is not leader)
    with Client(other.endpoint) as c:
        lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=6))
        c.put(b"leased", b"v", lease=lease.ID)
        # a keep-alive through a follower reaches the leader's clock
        ka = next(c.lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease.ID)])))
        assert ka.TTL == 6
    renewed = time.monotonic()
    leader.kill()
    survivors = [m for m in members if m is not leader]
    leader_of(survivors)
    # the new leader restarts the countdown at the full TTL: nothing expires
    # before renewed + TTL, whatever the failover took
    with Client(other.endpoint) as c:
        while time.monotonic() < renewed + 5.5:
            assert c.get(b"leased", serializable=True).kvs, "lease expired early after failover"
            time.sleep(0.2)
        ttl = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID))
        assert ttl.grantedTTL == 6
        # ... and it does expire, decided by the new leader
        wait_until(lambda: not c.get(b"leased").kvs, 20, what="expiry under the new leader")


def _free_base_port(count: int) -> int:
    for base in range(31000, 60000, 97):
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def test_cluster_up_starts_supervises_and_stops(tmp_path, etcd_binaries):
    base = _free_base_port(6)
    proc = subprocess.Popen(
        [sys.executable, "-m", "etcdlite", "cluster", "up", "--size", "3", "--base-port", str(base),
         "--data-dir", str(tmp_path / "cluster")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        wait_until(lambda: any("[cluster] ready" in line for line in lines), 60, what="cluster up to be ready")
        endpoints = [f"127.0.0.1:{base + 2 * i}" for i in range(3)]
        rc, out, err = run_etcdctl(endpoints, "endpoint", "status")
        assert rc == 0, err
        assert sum(", true, " in line for line in out.splitlines()) == 1  # one leader
        rc, out, _ = run_etcdctl(endpoints[1], "member", "list")
        assert len(out.strip().splitlines()) == 3
        # the supervisor restarts a member that dies
        pid = int(subprocess.run(["pgrep", "-f", "--", f"--name n1 --data-dir {tmp_path}"], capture_output=True,
                                 text=True).stdout.split()[0])
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: any("n1 exited with -9; restarting" in line for line in lines), 10,
                   what="the supervisor to notice")
        rc, out, err = run_etcdctl(endpoints[1], "put", "k", "v")
        wait_until(lambda: run_etcdctl(endpoints[1], "get", "k")[1].strip().endswith("v"), 30,
                   what="the restarted member to serve")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    leftovers = subprocess.run(["pgrep", "-f", "--", f"--data-dir {tmp_path}"], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"members left running: {leftovers}"
    assert re.search(r"\[cluster\] stopping", "".join(lines))


def test_move_leader(procs, tmp_path, etcd_binaries):
    members = start_etcdlite_cluster(tmp_path, 3, procs)
    leader = leader_of(members)
    follower = next(m for m in members if m is not leader)
    with Client(follower.endpoint) as c:
        target = c.maintenance.Status(pb.StatusRequest()).header.member_id
        assert error_of(lambda: c.maintenance.MoveLeader(pb.MoveLeaderRequest(targetID=target))) == (
            grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
    with Client(leader.endpoint) as c:
        assert error_of(lambda: c.maintenance.MoveLeader(pb.MoveLeaderRequest(targetID=12345))) == (
            grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
    # etcdctl finds the leader among the endpoints and asks it
    rc, out, err = run_etcdctl(members, "move-leader", f"{target:x}")
    assert rc == 0, err
    assert f"to {target:x}" in out, out
    for m in members:
        with Client(m.endpoint) as c:
            assert c.maintenance.Status(pb.StatusRequest()).leader == target
    with Client(leader.endpoint) as c:
        c.put(b"after-move", b"v")  # the old leader forwards to the new one
