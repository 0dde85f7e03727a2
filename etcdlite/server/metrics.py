"""A member's metrics as etcd 3.4 names them, in Prometheus' text format.

What is counted is kept where it happens, as plain numbers: the journal's
fdatasync times (`etcdlite.raft.journal`), the leader changes a member saw
(`RaftNode.leader_changes`), the requests whose proposal failed and those
pending (`GroupCommit`); the rest is read from Raft, the store and /proc at
the scrape. Nothing here runs on the write path: a scrape formats what is
already known (no walk of the store).

Names, types, help texts and buckets are etcd 3.4's (`etcdserver/metrics.go`,
`wal/metrics.go`, `mvcc/metrics.go`, the health counters of
`etcdserver/api/etcdhttp`, client_golang's process collector), so dashboards
and alerts made for etcd read them unchanged. etcd's proposals_committed and
proposals_applied are its Raft commit and applied indexes (gauges despite
their `_total`); here they are pysyncobj's, whose entries are batches of
requests (group commit): they count entries, as etcd's do, not requests.
"""

from __future__ import annotations

import promtext
from etcdlite.config import API_VERSION
from etcdlite.raft import journal
from promtext import CONTENT_TYPE, COUNTER, GAUGE, HISTOGRAM, histogram_samples, process_text

__all__ = ["CONTENT_TYPE", "FAMILIES", "MemberMetrics", "family_text", "histogram_samples", "process_text"]

# etcd's cluster version label: the API level, major.minor
CLUSTER_VERSION = ".".join(API_VERSION.split(".")[:2])

# name -> (type, help), as etcd 3.4 serves them
FAMILIES: dict[str, tuple[str, str]] = {
    "etcd_cluster_version": (
        GAUGE, "Which version is running. 1 for 'cluster_version' label with current cluster version"),
    "etcd_debugging_mvcc_compact_revision": (GAUGE, "The revision of the last compaction in store."),
    "etcd_debugging_mvcc_current_revision": (GAUGE, "The current revision of store."),
    "etcd_debugging_mvcc_db_total_size_in_bytes": (
        GAUGE, "Total size of the underlying database physically allocated in bytes."),
    "etcd_debugging_mvcc_keys_total": (GAUGE, "Total number of keys."),
    "etcd_disk_wal_fsync_duration_seconds": (HISTOGRAM, "The latency distributions of fsync called by WAL."),
    "etcd_mvcc_db_total_size_in_bytes": (
        GAUGE, "Total size of the underlying database physically allocated in bytes."),
    "etcd_mvcc_db_total_size_in_use_in_bytes": (
        GAUGE, "Total size of the underlying database logically in use in bytes."),
    "etcd_server_has_leader": (GAUGE, "Whether or not a leader exists. 1 is existence, 0 is not."),
    "etcd_server_health_failures": (COUNTER, "The total number of failed health checks"),
    "etcd_server_health_success": (COUNTER, "The total number of successful health checks"),
    "etcd_server_id": (
        GAUGE, "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID."),
    "etcd_server_is_leader": (GAUGE, "Whether or not this member is a leader. 1 if is, 0 otherwise."),
    "etcd_server_is_learner": (GAUGE, "Whether or not this member is a learner. 1 if is, 0 otherwise."),
    "etcd_server_leader_changes_seen_total": (COUNTER, "The number of leader changes seen."),
    "etcd_server_proposals_applied_total": (GAUGE, "The total number of consensus proposals applied."),
    "etcd_server_proposals_committed_total": (GAUGE, "The total number of consensus proposals committed."),
    "etcd_server_proposals_failed_total": (COUNTER, "The total number of failed proposals seen."),
    "etcd_server_proposals_pending": (GAUGE, "The current number of pending proposals to commit."),
    "etcd_server_quota_backend_bytes": (GAUGE, "Current backend storage quota size in bytes."),
    "etcd_server_version": (
        GAUGE, "Which version is running. 1 for 'server_version' label with current version."),
    **promtext.PROCESS_FAMILIES,
}


def family_text(name: str, samples) -> str:
    """One family of FAMILIES in the text format (promtext.family_text)."""
    kind, help_text = FAMILIES[name]
    return promtext.family_text(name, kind, help_text, samples)


# ---------------------------------------------------------------------------
# a member


def _store_figures(machine) -> tuple[int, int, int, int]:
    kv = machine.kv
    return kv.current_revision, kv.compact_revision, machine.backend_size(), kv.key_count()


def _alarm_count(machine) -> int:
    return len(machine.alarms)


def _is_learner(machine, member_id: int) -> bool:
    return machine.members.is_learner(member_id)


class MemberMetrics:
    """A member's metrics, read at each scrape. `raft`: its RaftNode;
    `commit`: its GroupCommit; `read`: Backend.read (a query under the raft
    lock); `space_quota`: its quota in bytes (etcdlite.quota). The health
    counters are kept here (the health check is the metrics listener's)."""

    def __init__(self, member_id: int, raft, commit, read, space_quota: int = 0) -> None:
        self.member_id = member_id
        self.space_quota = space_quota
        self.raft = raft
        self.commit = commit
        self.read = read
        self.health_success = 0
        self.health_failures = 0

    def alarmed(self) -> bool:
        """Whether an alarm is active (then /health answers false, as etcd's)."""
        return self.read(_alarm_count) > 0

    def render(self) -> bytes:
        raft = self.raft
        revision, compacted, size, keys = self.read(_store_figures)
        has_leader = raft.has_leader
        fsync = histogram_samples(journal.FSYNC_BUCKETS, list(journal.fsync_counts), journal.fsync_seconds[0])
        families = [
            ("etcd_cluster_version", [("", (("cluster_version", CLUSTER_VERSION),), 1)]),
            # etcd's compact revision is 0 before any compaction; the store says -1
            ("etcd_debugging_mvcc_compact_revision", [("", (), max(compacted, 0))]),
            ("etcd_debugging_mvcc_current_revision", [("", (), revision)]),
            ("etcd_debugging_mvcc_db_total_size_in_bytes", [("", (), size)]),
            ("etcd_debugging_mvcc_keys_total", [("", (), keys)]),
            ("etcd_disk_wal_fsync_duration_seconds", fsync),
            ("etcd_mvcc_db_total_size_in_bytes", [("", (), size)]),
            ("etcd_mvcc_db_total_size_in_use_in_bytes", [("", (), size)]),
            ("etcd_server_has_leader", [("", (), int(has_leader))]),
            ("etcd_server_health_failures", [("", (), self.health_failures)]),
            ("etcd_server_health_success", [("", (), self.health_success)]),
            ("etcd_server_id", [("", (("server_id", format(self.member_id, "x")),), 1)]),
            ("etcd_server_is_leader", [("", (), int(has_leader and raft.is_leader))]),
            ("etcd_server_is_learner", [("", (), int(self.read(_is_learner, self.member_id)))]),
            ("etcd_server_leader_changes_seen_total", [("", (), raft.leader_changes)]),
            ("etcd_server_proposals_applied_total", [("", (), raft.applied_index)]),
            ("etcd_server_proposals_committed_total", [("", (), raft.commit_index)]),
            ("etcd_server_proposals_failed_total", [("", (), self.commit.failed)]),
            ("etcd_server_proposals_pending", [("", (), self.commit.pending())]),
            ("etcd_server_quota_backend_bytes", [("", (), self.space_quota)]),
            ("etcd_server_version", [("", (("server_version", API_VERSION),), 1)]),
        ]
        text = "".join(family_text(name, samples) for name, samples in families) + process_text()
        return text.encode()
