"""etcdlite's Raft: pysyncobj, run in the member's event loop, with its journal, peer framing
and AppendEntries flow replaced or fixed where a member needs it.

The rest of etcdlite uses `RaftNode` and `FAILURES` only; `PeerNode` is here because pysyncobj
pickles it, as `etcdlite.raft.PeerNode`, into snapshots and membership log entries. Importing
this package sets pysyncobj up for the whole process (its pickle protocol, the journal it opens,
the priority of its snapshot child): see `node`. Files, one idea each:

- ``node``: RaftNode (propose, leader, term, indexes), the replicated state, the process-wide setup
- ``loop``: pysyncobj ticked by the asyncio event loop, which watches its sockets
- ``journal``: the Raft log on a file written with pwrite(2), only its newest entries in memory
- ``journal_format``: the journal's records and their checksums; reading them at start, cutting a
  torn tail and refusing damage to what was synced
- ``durable``: what is synced, and when, so that a power loss keeps every acknowledged write
- ``snapshot_file``: snapshots written as a plain pickle (pysyncobj gzips them) with a checksum,
  every kind read
- ``log_guard``: two fixes to pysyncobj's AppendEntries flow (acked entries kept, no re-sends)
- ``peer_transport``: peer messages framed with HMAC-SHA256, sent once per tick
- ``learners``: members that receive the log without a vote, held apart from pysyncobj's voters
- ``leader_calls``: calls the leader answers outside the log (lease keep-alives), forwarded to it
- ``peer_calls``: calls one member makes of a named peer (the corruption checks' hashes)
"""

from .leader_calls import NotLeader
from .node import FAILURES, PeerNode, RaftNode

__all__ = [
    "FAILURES",
    "NotLeader",
    "PeerNode",
    "RaftNode",
]
