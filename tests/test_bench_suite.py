"""The benchmark suite end to end, shortened: etcdlite 1 and the bare server's put
repetitions take turns, and results.md shows the ratio of each pair."""

from __future__ import annotations

import json
import subprocess

import pytest

from harness.procs import PYTHON, REPO

pytestmark = pytest.mark.process


def test_bare_and_no_fsync_put_repetitions_take_turns_with_etcdlite1(tmp_path):
    out = tmp_path / "out"
    cmd = [PYTHON, "-m", "benchmarks", "--only", "put", "--targets", "etcdlite1,bare,etcdlite1_nofsync",
           "--duration", "0.3", "--reps", "2", "--procs", "2", "--out", str(out),
           "--workdir", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    T = json.loads((out / "results.json").read_text())["targets"]
    assert T["bare"]["paired_with"] == T["etcdlite1_nofsync"]["paired_with"] == "etcdlite1"
    for c in ("1", "16", "64", "256"):
        lite, bare, nosync = (T[n]["put"][c] for n in ("etcdlite1", "bare", "etcdlite1_nofsync"))
        assert lite["errors"] == bare["errors"] == nosync["errors"] == 0
        assert min(lite["ops_per_s_runs"] + bare["ops_per_s_runs"] + nosync["ops_per_s_runs"]) > 0
        a, b, n = lite["started_runs"], bare["started_runs"], nosync["started_runs"]
        assert len(a) == len(b) == len(n) == 2
        assert a[0] < b[0] < n[0] < a[1] < b[1] < n[1]  # etcdlite 1, bare, no fsync, etcdlite 1, ...
    assert "put measured beside etcdlite1" in done.stderr
    md = (out / "results.md").read_text()
    assert "etcdlite 1 ÷ bare, by pair" in md
    (row,) = [line for line in md.splitlines() if line.startswith("| 256 |") and line.count("x,") == 1]
    assert row.rstrip(" |").endswith("x")
    # the no-sync member ran with the flag, the other without, and they have their own section
    assert "--unsafe-no-fsync" in T["etcdlite1_nofsync"]["argv"]
    assert "--unsafe-no-fsync" not in T["etcdlite1"]["argv"]
    section = md.split("What the syncs cost")[1].split("\n## ")[0]
    (row,) = [line for line in section.splitlines() if line.startswith("| put, 256 clients: ops/s |")]
    assert row.count("x") >= 3  # the ratio and two by-pair ratios


@pytest.mark.parametrize("target", ["bare", "etcdlite"])
def test_bytecodes_per_put_are_counted_for_the_server_and_the_client(target):
    """benchmarks/bytecodes.py counts, per function, what the server's and the client's code runs
    for each put; the bare server's count is the same twice (nothing timed in its path)."""
    from benchmarks.bytecodes import count

    counts = count(target, puts=20, warmup=20)
    assert counts["connection.py:on_data"] > 0 and counts["h2client.py:call"] > 0, counts.most_common(8)
    if target == "etcdlite":
        assert counts["apply.py:apply_batch"] > 0
    else:
        assert count(target, puts=20, warmup=20) == counts


def test_the_bare_server_answers_check_perfs_get_and_delete(tmp_path):
    """etcdctl check perf begins with a Get of its prefix and ends with a DeleteRange of it:
    the bare server answers both, so the suite can run check perf against it."""
    import grpc

    from benchmarks.targets import Target
    from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
    from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc

    target = Target("bare", tmp_path).start()
    try:
        with grpc.insecure_channel(target.endpoints[0]) as ch:
            kv = rpc.KVStub(ch)
            put = kv.Put(pb.PutRequest(key=b"/etcdctl-check-perf/a", value=b"v"), timeout=10)
            got = kv.Range(pb.RangeRequest(key=b"/etcdctl-check-perf/", range_end=b"/etcdctl-check-perf0",
                                           limit=1), timeout=10)
            assert got.header.revision == put.header.revision and not got.kvs
            deleted = kv.DeleteRange(pb.DeleteRangeRequest(key=b"/etcdctl-check-perf/",
                                                           range_end=b"/etcdctl-check-perf0"), timeout=10)
            assert deleted.header.revision == put.header.revision + 1
    finally:
        target.stop()


def test_the_synced_bare_server_answers_a_put_once_its_value_is_in_the_journal(tmp_path):
    """bare_sync (bare_server --sync): a Put's answer comes after its value was appended to the
    journal file (and synced), the Puts of one turn together; the revisions stay the bare server's."""
    import grpc

    from benchmarks.targets import Target
    from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
    from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc

    target = Target("bare_sync", tmp_path).start()
    try:
        (journal,) = tmp_path.glob("bare_sync-*/bare.journal")
        with grpc.insecure_channel(target.endpoints[0]) as ch:
            kv = rpc.KVStub(ch)
            first = kv.Put(pb.PutRequest(key=b"k1", value=b"first-value"), timeout=10)
            assert journal.read_bytes().endswith(b"first-value")
            futures = [kv.Put.future(pb.PutRequest(key=b"k%d" % i, value=b"<v%d>" % i), timeout=10)
                       for i in range(2, 12)]
            revisions = sorted(f.result().header.revision for f in futures)
            assert revisions == list(range(first.header.revision + 1, first.header.revision + 11))
            data = journal.read_bytes()
            assert all(b"<v%d>" % i in data for i in range(2, 12))
    finally:
        target.stop()
