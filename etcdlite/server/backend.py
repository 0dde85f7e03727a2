"""What etcd's gRPC services (kv, lease, cluster, maintenance, watch) and the
lease clock use of the member behind them: `Backend`, implemented by
`Member`. The services translate between the wire and these calls; how a
write is batched into Raft, how a read is made linearizable and how headers
are made stays behind them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable, Concatenate, Protocol, TypeVar

if TYPE_CHECKING:
    from etcdlite.apply import Op, StateMachine
    from etcdlite.config import MemberConfig
    from etcdlite.lessor import Lessor
    from etcdlite.server.auth import AuthGate
    from etcdlite.server.space_quota import SpaceGuard
    from etcdlite.watch_hub import WatchHub

T = TypeVar("T")
# a write's answer, once applied here: on_done(result, None) or on_done(None, error)
OnDone = Callable[[object, "Exception | None"], None]


class RaftStatus(Protocol):
    """This member's view of Raft, as Status, MoveLeader, MemberAdd,
    MemberPromote and the lease clock read it (RaftNode); `calls` are its
    LeaderCalls."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader(self) -> str | None:
        """The leader's Raft address, None while there is none."""

    @property
    def term(self) -> int: ...

    @property
    def commit_index(self) -> int: ...

    @property
    def applied_index(self) -> int: ...

    def peers(self) -> set[str]:
        """Raft addresses of the other voting members in Raft's configuration now."""

    def learners(self) -> set[str]:
        """Raft addresses of the learners held now (receiving the log, without a vote)."""

    def learner_progress(self, address: str) -> tuple[int, int] | None:
        """On the leader: (the learner's match index, the leader's last index)."""

    def transfer_leadership(self, address: str) -> None:
        """Ask (on the leader) to hand leadership to `address`; best effort."""


class Backend(Protocol):
    """The member, as its services see it. Writes are proposed and answered
    once applied here; reads see the applied state, under the lock that
    applying takes."""

    id: int
    cfg: MemberConfig  # limits, and the initial cluster as configured
    hub: WatchHub  # watchers, and the newest revision published to them
    lessor: Lessor  # lease IDs and remaining TTLs (the leader's clock)
    raft: RaftStatus
    auth: AuthGate  # who sends a call, and what they may read
    space: SpaceGuard  # the space quota before Raft, and this member's NOSPACE alarm
    learner: bool  # whether the member table has this member as a learner

    def propose(self, op: Op, request, tail: tuple = ()) -> Awaitable[object]:
        """Replicate one request (a protobuf message, or None) and return its
        result once applied here; raises its EtcdError. `tail`: what the
        command carries after the request (with auth, its sender: see
        etcdlite.apply)."""

    def submit(self, op: Op, request, on_done: OnDone, data: bytes | None = None, tail: tuple = ()) -> None:
        """propose() for callers without a coroutine: on_done runs once the
        request is applied here (or failed), inside the apply. `data`: the
        request's bytes, when the caller has them. Raises EtcdError at once
        for a request too large."""

    def submit_put_value(self, key: bytes, value: bytes, on_done: OnDone, size: int) -> None:
        """submit() for a Put of only a key and a value (no lease, prev_kv or
        ignore_*); its result is the put's revision (an int). `size`: the
        request's bytes on the wire."""

    def read_barrier(self, serializable: bool = False) -> Awaitable[None]:
        """Return once the local state holds every write acknowledged before
        the call (linearizable reads), at once if `serializable`."""

    def read(self, query: Callable[Concatenate[StateMachine, ...], T], arg: object = ...) -> T:
        """query(machine), or query(machine, arg) when `arg` is given, on the
        state machine under the lock that applying takes (one argument at
        most: Range's path stays as short as it was)."""

    def header(self, h, revision: int | None = None) -> None:
        """Fill a response's header message (cluster and member ID, Raft
        term; the revision if given)."""

    def header_field(self, revision: int) -> bytes:
        """A response's whole header field (number 1) on the wire, for
        responses put together from bytes."""

    def batch_header_field(self, revision: int) -> bytes:
        """header_field, for the answers given by `submit`'s on_done (the
        term and cluster ID were checked once for their batch)."""
