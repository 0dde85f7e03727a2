"""The replicated member table: who is in the cluster, by etcd member ID.

Pure, like the rest of the state machine. It starts empty; the first
`publish` applied (every member publishes itself once it is up, carrying the
cluster it was configured with) fills it with the initial cluster and fixes
the cluster ID, so a member added later, configured with a different
--initial-cluster, still reports the same cluster. Raft's own configuration
(pysyncobj's node list) is made to follow this table's voting members by the
leader (`RaftNode.reconcile_peers`); its learners (etcd's non-voting members,
at most MAX_LEARNERS) are held apart by every member (`etcdlite.raft.learners`).
"""

from __future__ import annotations

from etcdlite import errors
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

# etcd's limit (its maxLearners)
MAX_LEARNERS = 1


class MemberTable:
    def __init__(self):
        self.cluster_id = 0
        # ID -> (name, peer URLs, client URLs)
        self._members: dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
        self.removed: set[int] = set()

    # IDs of the members that are learners; replaced, never changed in place (a class
    # attribute: tables pickled before learners existed have none)
    learners: frozenset[int] = frozenset()

    @property
    def bootstrapped(self) -> bool:
        return self.cluster_id != 0

    def __contains__(self, member_id: int) -> bool:
        return member_id in self._members

    def publish(self, req: pb.MemberAddResponse) -> None:
        """`req.member` is the publishing member with its name and client
        URLs; `req.members` its --initial-cluster; `req.header.cluster_id`
        the cluster ID it derived from it."""
        if not self.bootstrapped:
            self.cluster_id = req.header.cluster_id
            for m in req.members:
                if m.ID not in self.removed:
                    self._members[m.ID] = (m.name, tuple(m.peerURLs), ())
        me = req.member
        if me.ID in self._members:
            _, peer_urls, _ = self._members[me.ID]
            self._members[me.ID] = (me.name, peer_urls, tuple(me.clientURLs))

    def add(self, m: pb.Member) -> None:
        urls = set(m.peerURLs)
        for _, peer_urls, _ in self._members.values():
            if urls & set(peer_urls):
                raise errors.PEER_URL_EXISTS
        if m.isLearner:
            if len(self.learners) >= MAX_LEARNERS:
                raise errors.TOO_MANY_LEARNERS
            self.learners = self.learners | {m.ID}
        self.removed.discard(m.ID)
        self._members[m.ID] = ("", tuple(m.peerURLs), ())

    def promote(self, member_id: int) -> None:
        """A learner becomes a voting member (etcd's MemberPromote, as applied)."""
        if member_id not in self._members:
            raise errors.MEMBER_NOT_FOUND
        if member_id not in self.learners:
            raise errors.MEMBER_NOT_LEARNER
        self.learners = self.learners - {member_id}

    def is_learner(self, member_id: int) -> bool:
        return member_id in self.learners

    def check_update(self, member_id: int, peer_urls) -> None:
        """etcd's checks of a member's new peer URLs: the member exists, and
        no other member has any of the URLs."""
        if member_id not in self._members:
            raise errors.MEMBER_NOT_FOUND
        urls = set(peer_urls)
        for other, (_, their_urls, _) in self._members.items():
            if other != member_id and urls & set(their_urls):
                raise errors.PEER_URL_EXISTS

    def update(self, m: pb.Member) -> None:
        """A member's peer URLs replaced (etcd's MemberUpdate)."""
        self.check_update(m.ID, m.peerURLs)
        name, _, client_urls = self._members[m.ID]
        self._members[m.ID] = (name, tuple(m.peerURLs), client_urls)

    def remove(self, member_id: int) -> None:
        if member_id not in self._members:
            raise errors.MEMBER_NOT_FOUND
        del self._members[member_id]
        self.learners = self.learners - {member_id}
        self.removed.add(member_id)

    def list(self) -> list[pb.Member]:
        return [
            pb.Member(ID=i, name=name, peerURLs=peer_urls, clientURLs=client_urls, isLearner=i in self.learners)
            for i, (name, peer_urls, client_urls) in sorted(self._members.items())
        ]

    def peer_urls(self) -> dict[int, tuple[str, ...]]:
        return {i: peer_urls for i, (_, peer_urls, _) in self._members.items()}
