"""Learners: members that receive the log and have no vote (etcd's non-voting members).

pysyncobj knows voting nodes only: its commit step, its elections (the votes
it asks for and counts) and its leader's step-down check all count the nodes
of its configuration, `__otherNodes`. A learner is kept out of that set: every
member holds the learners in `__readonlyNodes`, the set pysyncobj's leader
sends AppendEntries and snapshots to beside its voters and counts nowhere.
Unlike pysyncobj's own read-only nodes (anonymous connections dialled in), a
learner is a transport node like a voter, dialled and known by its address.
So the quorum is the voters' by construction, with no change to pysyncobj's
counting.

Who is a learner is the replicated member table's (etcdlite.membership); each
member follows it (`LearnerPeers.hold_learners`, from RaftNode). Promotion is
a pysyncobj 'add' of the learner's node, proposed by the leader once the
table says it votes: like any single-server change it counts from its entry
on, on each member as the entry reaches it, and the entry takes the node out
of the learner set first (`_SyncObj__doChangeCluster`, also when a snapshot
brings the configuration: `_SyncObj__updateClusterConfiguration`).

A learner never campaigns (`may_campaign`, which the member answers from the
table) and never votes (`is_learner`, the table's too: nobody should ask it,
being in no member's configuration, but a member restarted with it in its
--initial-cluster has it there until the leader takes it out); a vote
request from a node held as a learner is dropped.
"""

from __future__ import annotations

from pysyncobj import SyncObj


class LearnerPeers(SyncObj):
    def __init__(self, *args, **kwargs):
        # set before SyncObj.__init__: kept out of snapshots
        self.__dict__["learners"] = {}  # address -> node, the learners held
        self.__dict__["may_campaign"] = None  # () -> bool, set by the RaftNode
        self.__dict__["is_learner"] = None  # () -> bool, whether this member is one; set by the RaftNode
        super().__init__(*args, **kwargs)

    def hold_learners(self, addresses: set[str], make_node) -> None:
        """Make the learners held those at `addresses` (this member's own
        address and voters of pysyncobj's configuration left out);
        `make_node(address)` makes a new one's node."""
        held = self.__dict__["learners"]
        for address in [a for a in held if a not in addresses]:
            self._release_learner(address)
        self_node = self._SyncObj__selfNode
        voters = self._SyncObj__otherNodes
        for address in addresses:
            if address in held or (self_node is not None and address == self_node.id):
                continue
            node = make_node(address)
            if node in voters:
                continue
            held[address] = node
            self._SyncObj__readonlyNodes.add(node)
            self._SyncObj__raftNextIndex[node] = self._SyncObj__getCurrentLogIndex() + 1
            self._SyncObj__raftMatchIndex[node] = 0
            self._SyncObj__transport.addNode(node)

    def _release_learner(self, address: str) -> None:
        node = self.__dict__["learners"].pop(address)
        self._SyncObj__readonlyNodes.discard(node)
        self._SyncObj__raftNextIndex.pop(node, None)
        self._SyncObj__raftMatchIndex.pop(node, None)
        self._SyncObj__serializer.cancelTransmisstion(node)
        self._SyncObj__transport.dropNode(node)
        self._SyncObj__connectedNodes.discard(node)

    def learner_addresses(self) -> set[str]:
        return set(self.__dict__["learners"])

    def learner_match(self, address: str) -> int | None:
        """The leader's match index for the learner at `address` (None if
        it holds none there)."""
        node = self.__dict__["learners"].get(address)
        return None if node is None else self._SyncObj__raftMatchIndex.get(node)

    def _SyncObj__doChangeCluster(self, request, reverse=False):
        held = self.__dict__["learners"]
        if held and (request[0] == "add") != reverse and request[1] in held:
            self._release_learner(request[1])  # promoted: a voter from this entry on
        return super()._SyncObj__doChangeCluster(request, reverse)

    def _SyncObj__updateClusterConfiguration(self, newNodes):
        held = self.__dict__["learners"]
        for node in newNodes:
            address = getattr(node, "id", node)
            if address in held:
                self._release_learner(address)
        return super()._SyncObj__updateClusterConfiguration(newNodes)

    def _SyncObj__connectedToAnyone(self):
        # asked only before campaigning
        may_campaign = self.__dict__["may_campaign"]
        if may_campaign is not None and not may_campaign():
            return False
        return super()._SyncObj__connectedToAnyone()

    def _SyncObj__onMessageReceived(self, node, message):
        if message.get("type") == "request_vote":
            is_learner = self.__dict__["is_learner"]
            if node in self.__dict__["learners"].values() or (is_learner is not None and is_learner()):
                return
        super()._SyncObj__onMessageReceived(node, message)
