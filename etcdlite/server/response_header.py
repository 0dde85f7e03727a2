"""The `header` every etcd response carries (cluster ID, member ID, Raft
term, revision), filled into protobuf messages or written as bytes.

Responses put together from bytes (a plain Put's whole response, live watch
events) take the header's bytes from here: they are made once per revision,
not serialized per response.
"""

from __future__ import annotations

from etcdlite.watch_hub import varint

# a varint's first byte when more bytes follow, by its low 7 bits
_VARINT_FIRST = [bytes((low | 0x80,)) for low in range(0x80)]


class ResponseHeaders:
    """The headers of one member's responses. `raft` gives the term and the
    replicated member table (its cluster ID, once the first publish is
    applied; `cluster_id` until then)."""

    def __init__(self, member_id: int, cluster_id: int, raft) -> None:
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.raft = raft
        self._term = self._cluster = self._revision = None
        self._field = b""
        self._parts = (b"", b"")
        self._block = None
        self._around = (b"", b"")

    def fill(self, h, revision: int | None = None) -> None:
        """Set a response's header message `h` (a pb.ResponseHeader);
        without `revision`, the header's revision is left as it is."""
        h.cluster_id = self.raft.machine.members.cluster_id or self.cluster_id
        h.member_id = self.member_id
        h.raft_term = self.raft.term
        if revision is not None:
            h.revision = revision

    def field(self, revision: int) -> bytes:
        """A response's `header` field (number 1) on the wire, for responses
        put together from bytes (a plain Put's whole response is this); the
        last one is kept (every watcher of an event gets the same). Only the
        revision's varint is new per revision, and of it only the first byte
        for 128 revisions in a row: the bytes around it are kept while the
        term, the cluster ID and revision >> 7 stay."""
        self.check()
        return self.batch_field(revision)

    def check(self) -> None:
        """Make the header's bytes anew if the term or the cluster ID moved."""
        raft = self.raft
        term = raft.term
        cluster_id = raft.machine.members.cluster_id or self.cluster_id
        if term != self._term or cluster_id != self._cluster:
            # fields in number order, zeros left out, as protobuf writes them
            head = (b"\x08" + varint(cluster_id) if cluster_id else b"") + b"\x10" + varint(self.member_id)
            self._parts = (head, b"\x20" + varint(term) if term else b"")
            self._term, self._cluster = term, cluster_id
            self._revision = self._block = None

    def batch_field(self, revision: int) -> bytes:
        """`field` for the answers of a batch being settled: `check` ran once
        for all of them (neither the term nor the cluster ID moves while they
        are answered, in one go)."""
        if revision == self._revision:
            return self._field
        if revision >> 7 == self._block:
            field = self._around[0] + _VARINT_FIRST[revision & 0x7F] + self._around[1]
        else:
            head, tail = self._parts
            body = head + b"\x18" + varint(revision) + tail if revision else head + tail
            # at most 4 varints of 10 bytes and their tags: the length is one byte
            field = b"\x0a" + bytes((len(body),)) + body
            if revision >= 0x80:  # a varint of 2 bytes or more: keep what is around its first
                at = 3 + len(head)
                self._around = (field[:at], field[at + 1:])
                self._block = revision >> 7
        self._revision = revision
        self._field = field
        return field
