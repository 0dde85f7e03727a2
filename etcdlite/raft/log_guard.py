"""Two fixes for pysyncobj 0.3.17's AppendEntries flow.

1. Its follower must not drop entries it acked.

On an AppendEntries message, pysyncobj's follower deletes every entry after
`prevLogIdx` and appends the message's entries, whether or not the entries it
deletes conflict with the leader's. Raft deletes only from the first
conflicting entry. The difference shows when a leader sends from an older
index again: pysyncobj's leader advances `nextIndex` optimistically while it
streams batches (64 KiB each), then moves it back to the first successful
reply's index, so it re-sends from there with one batch, or sends a
heartbeat with no entries at all. The follower then truncates entries it has
already acknowledged (and applied: pysyncobj logs "truncating already-applied
log entries ... state machine may have diverged"). The state machine does not
diverge by itself, since the same entries come again, but an acknowledged
write can be lost: if the leader had counted this follower in the majority
that committed an entry and then crashes before re-sending it, the entry may
now be on too few members and a new leader can overwrite it.

`GuardedSyncObj` rewrites such a message before pysyncobj sees it: when every
entry in it matches the local log and the local log goes further, the local
entries beyond it that were written in the leader's own term (and so are in
the leader's log as they are here) are added to the message, so that
pysyncobj's delete-and-append leaves the log as it was and the reply reports
them as matched. Entries from older terms after the last such entry may
conflict with the leader's log; for those pysyncobj's behaviour is kept.

2. Its leader must not re-send what is in flight. The leader streams entries
to a follower without waiting for replies (it advances `nextIndex` as it
sends), but every successful reply then sets `nextIndex` back to just after
the entries that reply acknowledges, so the next send repeats everything
sent since. Under load that multiplied peer traffic many times over (and
fed case 1). `GuardedSyncObj` keeps `nextIndex` where it was when a
successful reply would move it back. A follower that really misses entries
(a connection dropped with messages in flight) answers the next message,
or the next heartbeat, with a reset, which still moves `nextIndex` back,
as Raft's consistency check requires.
"""

from __future__ import annotations

from pysyncobj import SyncObj


def entries_to_keep(local: list, prev_idx: int, entries: list, term: int) -> list:
    """The local entries after the message's to add to it (see module doc).

    `local` holds the local entries from index prev_idx + 1 on, as
    (command, index, term) tuples; `entries` are the message's."""
    if len(local) <= len(entries):
        return []
    for mine, theirs in zip(local, entries):
        if mine[1] != theirs[1] or mine[2] != theirs[2]:
            return []  # a real conflict: Raft truncates here too
    extra = local[len(entries):]
    last_own = -1
    for i, entry in enumerate(extra):
        if entry[2] == term:
            last_own = i
    return extra[: last_own + 1]


class GuardedSyncObj(SyncObj):
    # pysyncobj registers its handler as `self.__onMessageReceived`, which
    # resolves to this override.
    def _SyncObj__onMessageReceived(self, node, message):
        kind = message.get("type")
        if kind == "append_entries" and "prevLogIdx" in message and "transmission" not in message:
            self._guard_append(message)
        elif kind == "next_node_idx" and message.get("success") and not message.get("reset"):
            next_index = self._SyncObj__raftNextIndex
            ahead = next_index.get(node)
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            if ahead is not None and next_index.get(node, ahead) < ahead:
                next_index[node] = ahead
            return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _guard_append(self, message) -> None:
        prev_idx = message["prevLogIdx"]
        entries = message.get("entries", [])
        local = self._SyncObj__getEntries(prev_idx + 1)
        if not local:
            return
        keep = entries_to_keep(local, prev_idx, entries, message["term"])
        if keep:
            message["entries"] = list(entries) + list(keep)
