"""Acknowledged writes survive the loss of a majority of a 3-member cluster:
its processes killed (SIGKILL), and its machines' power (what was not
synced is gone: harness.powerloss_fs, which keeps unsynced writes in memory
and forgets them, as LazyFS does, or tears them: each unsynced page lost,
kept, or kept in part, as a disk may leave them, so that journals come back
with torn records to cut). With --unsafe-no-fsync a power loss loses
acknowledged writes, which is what the flag risks.

The workload is tests/cluster_workload.py's PutLoad: client threads on every
member, each put recorded with its revision once acknowledged. After the
restart every acknowledged put is on every member with that value and
revision, the members agree (HashKV), and revisions go on from there.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
from cluster_workload import Cluster, PutLoad, check_acked_everywhere, read_prefix
from linearizability import check
from test_cluster_faults import LinearizabilityWorkload
from harness import powerloss_fs
from harness.etcd_client import Client, wait_until
from harness.procs import start_etcdlite_cluster

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]

# snapshots (and the journal trimmed to them) every few entries, so that a
# kill or a power loss also finds them mid-way
SNAPSHOT_COUNT = 40


@pytest.fixture
def cluster_of(procs):
    """cluster_of(tmp_path, data_root=None, **flags) -> Cluster: 3 etcdlite
    members, their data directories under `data_root` if given; all killed
    at teardown."""
    made: list[Cluster] = []

    def make(tmp_path, data_root=None, **flags) -> Cluster:
        def place(members) -> None:
            if data_root is not None:
                for m in members:
                    m.data_dir = data_root / f"{m.name}.data"

        members = start_etcdlite_cluster(tmp_path, 3, procs, before_launch=place, **flags)
        made.append(Cluster(members, None))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            c.cleanup()


@pytest.fixture
def powerloss_mount(tmp_path):
    """A PowerLossMount; the tests ask for it before cluster_of, so that it is
    unmounted after the members on it are killed."""
    reason = powerloss_fs.unavailable_reason()
    if reason:
        pytest.skip(f"power-loss filesystem unavailable: {reason}")
    mount = powerloss_fs.PowerLossMount(tmp_path / "fs")
    try:
        yield mount
    finally:
        mount.close()


def _load_then_kill(cluster: Cluster, victims, prefix: str, count: int = 300, catch=None) -> dict:
    """Puts through every member until `count` are acknowledged, then SIGKILL
    `victims` (each whole process group: a snapshot child dies with them)
    while the load goes on; what was acknowledged. `catch(member)`, if
    given, first stops each victim at a chosen moment."""
    load = PutLoad(cluster.members, prefix, threads=6).start()
    try:
        wait_until(lambda: load.count() >= count, 90, what=f"{count} acknowledged puts")
        if catch is not None:
            # one follower, then the leader (the other follower still acks its
            # appends), then the other follower, which without a leader appends
            # nothing more: it may not be caught
            leader = cluster.wait_leader()
            followers = [m for m in victims if m is not leader]
            order = followers[:1] + [m for m in victims if m is leader] + followers[1:]
            for i, m in enumerate(order):
                catch(m, required=i < 2)
        for m in victims:
            os.killpg(m.pid, signal.SIGKILL)
        for m in victims:
            m.kill()
    finally:
        load.stop()
    return dict(load.acked)


def _restart(victims) -> None:
    for m in victims:
        m.launch()
    for m in victims:
        m.wait_ready()


def _check_all_back(cluster: Cluster, prefix: str, acked: dict) -> int:
    check_acked_everywhere(cluster, prefix.encode() + b"/", acked)
    top = max(rev for _, rev, _ in acked.values())
    with Client(cluster.members[0].endpoint) as c:
        rev = c.kv.Put(pb.PutRequest(key=prefix.encode() + b"-after", value=b"x"), timeout=10).header.revision
    assert rev > top, f"revision went back: {rev} after acknowledged revision {top}"
    return cluster.assert_hashkv_equal()


@pytest.mark.parametrize("fsync", ["fsync", "unsafe-no-fsync"])
def test_sigkill_of_a_majority_loses_no_acknowledged_write(cluster_of, tmp_path, fsync):
    """A killed process leaves its writes in the OS page cache: both ways
    keep every acknowledged write."""
    cluster = cluster_of(tmp_path, snapshot_count=SNAPSHOT_COUNT, unsafe_no_fsync=fsync != "fsync")
    leader = cluster.wait_leader()
    victims = [leader, next(m for m in cluster.members if m is not leader)]
    t0 = time.monotonic()
    acked = _load_then_kill(cluster, victims, "k")
    _restart(victims)
    rev = _check_all_back(cluster, "k", acked)
    print(f"  {fsync}: {len(acked)} acknowledged puts all back after SIGKILL of {[m.name for m in victims]} "
          f"(leader {leader.name}); HashKV equal at revision {rev}; {time.monotonic() - t0:.1f}s")


class PowerLoss:
    """Who loses power (killed, unsynced writes dropped, restarted), who is
    gone for good (killed, never restarted) and who is stopped (SIGSTOP)
    throughout the load, from (leader, follower, other follower); and how
    often members snapshot."""

    def __init__(self, pick, snapshot_count: int = 100_000) -> None:
        self.pick = pick
        self.snapshot_count = snapshot_count


POWER_LOSSES = {
    # a majority: what it synced before acknowledging is all there is; snapshots
    # and journal trims every few entries, so the loss also finds them mid-way
    "leader+follower": PowerLoss(lambda leader, f1, f2: ([leader, f1], [], []), SNAPSHOT_COUNT),
    "all": PowerLoss(lambda leader, f1, f2: ([leader, f1, f2], [], []), SNAPSHOT_COUNT),
    # one follower lags (stopped), so every write is acknowledged on the
    # leader's and the other follower's word; with that follower gone the
    # leader's disk must hold every write it counted itself for
    "leader+lagging-follower,other-gone": PowerLoss(lambda leader, f1, f2: ([leader, f1], [f2], [f1])),
    # each acknowledged entry was synced by a follower before its reply: with
    # the leader gone the followers' disks must hold it all
    "followers,leader-gone": PowerLoss(lambda leader, f1, f2: ([f1, f2], [leader], [])),
}


@pytest.mark.parametrize("scenario", list(POWER_LOSSES))
def test_power_loss_loses_no_acknowledged_write(powerloss_mount, cluster_of, tmp_path, scenario):
    loss = POWER_LOSSES[scenario]
    cluster = cluster_of(tmp_path, data_root=powerloss_mount.path, snapshot_count=loss.snapshot_count)
    leader = cluster.wait_leader()
    f1, f2 = [m for m in cluster.members if m is not leader]
    lose_power, gone, stopped = loss.pick(leader, f1, f2)
    for m in stopped:
        cluster.sigstop(m)
    acked = _load_then_kill(cluster, lose_power + gone, "p", count=200)
    for m in stopped:
        cluster.stopped.discard(m.name)  # killed (SIGKILL ends a stopped process too)
    dropped = [powerloss_mount.drop(f"{m.name}.data") for m in lose_power]
    _restart(lose_power)
    survivors = Cluster([m for m in cluster.members if m not in gone], None)
    rev = _check_all_back(survivors, "p", acked)
    print(f"  {scenario}: power loss of {[m.name for m in lose_power]}, gone {[m.name for m in gone]} "
          f"(leader {leader.name}); unsynced (files, bytes) dropped {dropped}; {len(acked)} acknowledged "
          f"puts all back on {[m.name for m in survivors.members]}; HashKV equal at revision {rev}")


class _BigPuts:
    """Puts of 3 KB values through one member in a thread, beside the
    workload: records that span sectors, which a tear can cut through (the
    workload's own records are a few hundred bytes, within one sector,
    which a disk writes whole or not at all)."""

    def __init__(self, member) -> None:
        self._member = member
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with Client(self._member.endpoint) as c:
            i = 0
            while not self._stop.is_set():
                try:
                    c.kv.Put(pb.PutRequest(key=b"big/%d" % (i % 50), value=bytes([65 + i % 26]) * 3000), timeout=5)
                except Exception:
                    if self._stop.wait(0.05):
                        return
                i += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] in ("T", "t")


def _stop_unsynced(mount, m, required: bool = True) -> bool:
    """SIGSTOP `m` (its process group) at a moment its journal holds records
    not synced yet: stopped, it cannot sync them, and the power loss after
    finds them on their way to the disk. Tried again until so (for 30 s, or
    3 s if not `required`, then left stopped anyway); whether it was."""
    deadline = time.monotonic() + (30 if required else 3)
    while True:
        os.killpg(m.pid, signal.SIGSTOP)
        wait_until(lambda: _stopped(m.pid), 10, what=f"{m.name} stopped")  # a FUSE call in flight ends first
        if mount.unsynced_bytes(f"{m.name}.data/raft.journal") > 0:
            return True
        if time.monotonic() > deadline:
            assert not required, f"{m.name} never caught with unsynced journal records"
            return False
        os.killpg(m.pid, signal.SIGCONT)
        time.sleep(0.005 + 0.01 * random.random())  # let it append again


def _tear(mount, victims, seed: int) -> list[dict]:
    """The power loss of `victims`, tearing what they had not synced (each
    unsynced page lost, kept, or kept in part, on its own: powerloss_fs)."""
    return [mount.tear(f"{m.name}.data", seed + i) for i, m in enumerate(victims)]


def _cuts(members) -> int:
    """How many of `members` cut a torn journal tail at their last start."""
    return sum("cutting the journal there" in m.log_tail(300).rpartition("===== start #")[2] for m in members)


@pytest.mark.parametrize("scenario", ["leader+follower", "all"])
def test_torn_writes_at_a_power_loss_lose_no_acknowledged_write(powerloss_mount, cluster_of, tmp_path, scenario):
    """As test_power_loss_loses_no_acknowledged_write, the power loss tearing
    what was not synced instead of dropping it whole: journals, snapshots
    and meta files come back with records written in part, pages of one
    write kept and others lost. Each member cuts a torn journal tail and
    refuses nothing: everything acknowledged is back."""
    loss = POWER_LOSSES[scenario]
    cluster = cluster_of(tmp_path, data_root=powerloss_mount.path, snapshot_count=loss.snapshot_count)
    leader = cluster.wait_leader()
    f1, f2 = [m for m in cluster.members if m is not leader]
    lose_power, _, _ = loss.pick(leader, f1, f2)
    with _BigPuts(leader):
        acked = _load_then_kill(cluster, lose_power, "t", count=200,
                                catch=lambda m, required: _stop_unsynced(powerloss_mount, m, required))
    seed = 7 if scenario == "all" else 3
    torn = _tear(powerloss_mount, lose_power, seed)
    _restart(lose_power)
    rev = _check_all_back(cluster, "t", acked)
    print(f"  {scenario} torn (seed {seed}): pages {torn}; {_cuts(lose_power)} of {len(lose_power)} members cut a "
          f"torn journal tail; {len(acked)} acknowledged puts all back; HashKV equal at revision {rev}")


@pytest.mark.parametrize("loss", ["dropped", "torn"])
def test_history_stays_linearizable_across_a_power_loss(powerloss_mount, cluster_of, tmp_path, loss):
    """Puts, reads and compare-and-swaps on a few keys through every member
    (test_cluster_faults' workload) before, across and after a power loss:
    the whole history is linearizable, so nothing acknowledged or read
    before the loss is gone after it. One follower lags (stopped) while the
    history is made, so the leader counts itself for every write; the
    leader and that follower lose power, and come back while the other
    follower, which has every write, is stopped: the two must serve from
    their disks alone, then the third rejoins."""
    cluster = cluster_of(tmp_path, data_root=powerloss_mount.path, snapshot_count=SNAPSHOT_COUNT)
    leader = cluster.wait_leader()
    lagging, other = [m for m in cluster.members if m is not leader]
    cluster.sigstop(lagging)
    work = LinearizabilityWorkload(cluster.members, threads=6, pace=0.0).start()
    try:
        wait_until(lambda: work.completed() >= 300, 90, what="300 operations before the power loss")
        victims = [leader, lagging]
        if loss == "torn":
            with _BigPuts(leader):
                _stop_unsynced(powerloss_mount, leader)  # the lagging one is stopped already
        for m in victims:
            os.killpg(m.pid, signal.SIGKILL)
        for m in victims:
            m.kill()
        cluster.stopped.discard(lagging.name)
        cluster.sigstop(other)
        if loss == "torn":
            dropped = _tear(powerloss_mount, victims, 11)
        else:
            dropped = [powerloss_mount.drop(f"{m.name}.data") for m in victims]
        _restart(victims)
        before = work.completed()
        wait_until(lambda: work.completed() >= before + 200, 90, what="200 operations on the two restarted")
        cluster.sigcont(other)
        before = work.completed()
        wait_until(lambda: work.completed() >= before + 100, 90, what="100 operations with all three")
    finally:
        work.stop()
    ops = work.history.ops
    res = check(ops, timeout=90)
    assert res.ok, res.explanation
    cluster.assert_hashkv_equal()
    print(f"  {len(ops)} operations linearizable across the power loss ({loss}) of {[m.name for m in victims]} "
          f"({dropped}; {_cuts(victims)} cut a torn journal tail); counts {work.counts}")


def test_power_loss_with_unsafe_no_fsync_loses_acknowledged_writes(powerloss_mount, cluster_of, tmp_path):
    """What --unsafe-no-fsync risks, shown: nothing is synced, so when every
    member loses power every acknowledged write is gone (deterministic: no
    member keeps a copy to hand back)."""
    cluster = cluster_of(tmp_path, data_root=powerloss_mount.path, unsafe_no_fsync=True)
    assert "--unsafe-no-fsync" in cluster.members[0].log_tail(200), "no warning at start"
    cluster.wait_leader()
    acked = _load_then_kill(cluster, cluster.members, "u", count=100)
    dropped = [powerloss_mount.drop(f"{m.name}.data") for m in cluster.members]
    assert all(files > 0 for files, _ in dropped), f"nothing unsynced to lose: {dropped}"
    _restart(cluster.members)
    cluster.wait_leader()
    got = read_prefix(cluster.members[0], b"u/", serializable=False)
    lost = [k for k in acked if k not in got]
    assert lost, f"all {len(acked)} acknowledged puts survived a power loss without fsync"
    print(f"  --unsafe-no-fsync: {len(lost)} of {len(acked)} acknowledged puts lost to the power loss "
          f"(dropped {dropped})")
