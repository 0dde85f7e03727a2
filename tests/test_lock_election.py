"""etcd's Lock and Election services (v3lockpb, v3electionpb) over gRPC, and
`etcdctl lock` / `etcdctl elect` (etcdctl's own client-side mutex and
election over Txn, Watch and Lease).

The gRPC scenarios run against etcdlite and against the real etcd 3.4 alike
(parametrized): the same keys, revisions relations and error texts are
asserted on both. Where the two differ on purpose (a waiter whose own lease
ended: etcd 3.4 answers as if it held the lock, etcdlite as etcd 3.5) the
test says so.
"""

from __future__ import annotations

import signal
import threading

import grpc
import pytest

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.pb.v3electionpb import v3election_pb2 as epb
from etcdlite.pb.v3electionpb import v3election_pb2_grpc
from etcdlite.pb.v3lockpb import v3lock_pb2 as lpb
from etcdlite.pb.v3lockpb import v3lock_pb2_grpc
from harness.etcd_client import Client, error_of, leader_of, wait_until
from harness.procs import (
    ETCD_BIN, ETCDCTL_BIN, BackgroundEtcdctl, Registry, require_binary, start_etcdlite_cluster,
)

pytestmark = pytest.mark.process

UNKNOWN = grpc.StatusCode.UNKNOWN
CALL_TIMEOUT = 10


class Api(Client):
    """The KV and Lease stubs, and Lock and Election, of one endpoint."""

    def __init__(self, endpoint: str):
        super().__init__(endpoint)
        self.lock = v3lock_pb2_grpc.LockStub(self.channel)
        self.election = v3election_pb2_grpc.ElectionStub(self.channel)

    def grant(self, ttl: int = 30) -> int:
        return self.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl), timeout=CALL_TIMEOUT).ID

    def keys(self, prefix: bytes) -> set[bytes]:
        end = prefix[:-1] + bytes((prefix[-1] + 1,))
        return {kv.key for kv in self.get(prefix, range_end=end).kvs}

    def lock_of(self, name: bytes, lease: int, timeout: float = CALL_TIMEOUT):
        return self.lock.Lock(lpb.LockRequest(name=name, lease=lease), timeout=timeout)


def key(name: bytes, lease: int) -> bytes:
    return name + b"/" + b"%x" % lease


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    reg = Registry()
    yield reg.start_etcdlite(tmp_path_factory.mktemp("lock"), name="lock")
    reg.cleanup()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    require_binary(ETCD_BIN, "etcd (the real etcd 3.4 server)")
    reg = Registry()
    yield reg.start_real_etcd(tmp_path_factory.mktemp("lock-etcd"), name="lock-etcd")
    reg.cleanup()


@pytest.fixture(params=["etcdlite", "etcd"])
def server(request):
    return request.getfixturevalue("lite" if request.param == "etcdlite" else "real")


@pytest.fixture
def api(server):
    with Api(server.endpoint) as client:
        yield client


def queued(api: Api, name: bytes, *keys: bytes) -> None:
    """Until exactly `keys` are under the lock or election `name`."""
    wait_until(lambda: api.keys(name + b"/") == set(keys), 10, what=f"keys {keys} under {name}")


# --- Lock ------------------------------------------------------------------


def test_the_second_locker_answers_only_after_the_first_unlocks(api):
    a, b = api.grant(), api.grant()
    first = api.lock_of(b"two", a)
    assert first.key == key(b"two", a)
    second = api.lock.Lock.future(lpb.LockRequest(name=b"two", lease=b), timeout=CALL_TIMEOUT)
    queued(api, b"two", key(b"two", a), key(b"two", b))
    assert not second.done()  # its key waits behind the holder's
    unlocked = api.lock.Unlock(lpb.UnlockRequest(key=first.key), timeout=CALL_TIMEOUT)
    got = second.result()
    assert got.key == key(b"two", b)
    # answered from a read after the unlock: the server let it through only then
    assert got.header.revision >= unlocked.header.revision > first.header.revision
    assert api.keys(b"two/") == {key(b"two", b)}
    api.lock.Unlock(lpb.UnlockRequest(key=got.key), timeout=CALL_TIMEOUT)
    assert api.keys(b"two/") == set()


def test_three_lockers_are_served_in_the_order_they_came(api):
    leases = [api.grant() for _ in range(3)]
    holder = api.lock_of(b"three", leases[0])
    waiters = []
    for n, lease in enumerate(leases[1:], 2):
        waiters.append(api.lock.Lock.future(lpb.LockRequest(name=b"three", lease=lease), timeout=CALL_TIMEOUT))
        queued(api, b"three", *(key(b"three", lease) for lease in leases[:n]))
    # the last one waits for the middle one's delete, not the holder's
    api.lock.Unlock(lpb.UnlockRequest(key=holder.key), timeout=CALL_TIMEOUT)
    middle = waiters[0].result()
    assert middle.key == key(b"three", leases[1])
    assert not waiters[1].done()
    api.lock.Unlock(lpb.UnlockRequest(key=middle.key), timeout=CALL_TIMEOUT)
    assert waiters[1].result().key == key(b"three", leases[2])


def test_a_holder_whose_lease_is_revoked_hands_the_lock_on(api):
    a, b = api.grant(), api.grant()
    api.lock_of(b"revoked", a)
    waiting = api.lock.Lock.future(lpb.LockRequest(name=b"revoked", lease=b), timeout=CALL_TIMEOUT)
    queued(api, b"revoked", key(b"revoked", a), key(b"revoked", b))
    assert not waiting.done()
    revoked = api.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=a), timeout=CALL_TIMEOUT)
    got = waiting.result()
    assert got.key == key(b"revoked", b) and got.header.revision >= revoked.header.revision


def test_lock_with_a_missing_lease_is_etcds_error(api):
    # etcd's embedded client turns the Txn's NotFound back into a plain error: code Unknown
    assert error_of(lambda: api.lock_of(b"nolease", 0x7E57)) == (UNKNOWN, "etcdserver: requested lease not found")
    assert api.keys(b"nolease/") == set()


def test_lock_without_a_lease_gets_a_sixty_second_one_and_is_reentrant(api):
    got = api.lock_of(b"nolease0", 0)
    lease = int(got.key.rsplit(b"/", 1)[1], 16)
    ttl = api.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease), timeout=CALL_TIMEOUT)
    assert ttl.grantedTTL == 60
    again = api.lock_of(b"nolease0", lease)  # the same lease: the same key, nothing written
    assert again.key == got.key and again.header.revision == got.header.revision
    api.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease), timeout=CALL_TIMEOUT)


def test_unlock_answers_a_header_and_refuses_an_empty_key(api):
    rev = api.get(b"any").header.revision
    assert api.lock.Unlock(lpb.UnlockRequest(key=b"not/held"), timeout=CALL_TIMEOUT).header.revision == rev
    assert error_of(lambda: api.lock.Unlock(lpb.UnlockRequest(key=b""), timeout=CALL_TIMEOUT)) == (
        UNKNOWN, "etcdserver: key is not provided")


def test_a_waiter_that_gives_up_leaves_no_key(api):
    a, b = api.grant(), api.grant()
    holder = api.lock_of(b"giveup", a)
    waiting = api.lock.Lock.future(lpb.LockRequest(name=b"giveup", lease=b), timeout=CALL_TIMEOUT)
    queued(api, b"giveup", holder.key, key(b"giveup", b))
    waiting.cancel()
    queued(api, b"giveup", holder.key)
    # past its deadline: the same
    with pytest.raises(grpc.RpcError) as err:
        api.lock_of(b"giveup", b, timeout=0.5)
    # the client's own deadline, or etcd's server noticing it first (its Go context's error)
    assert (err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            or (err.value.code(), err.value.details()) == (UNKNOWN, "context deadline exceeded"))
    queued(api, b"giveup", holder.key)


def test_a_waiter_whose_own_lease_ended(api, request):
    a, b = api.grant(), api.grant()
    holder = api.lock_of(b"lost", a)
    waiting = api.lock.Lock.future(lpb.LockRequest(name=b"lost", lease=b), timeout=CALL_TIMEOUT)
    queued(api, b"lost", holder.key, key(b"lost", b))
    api.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=b), timeout=CALL_TIMEOUT)
    queued(api, b"lost", holder.key)
    assert not waiting.done()
    api.lock.Unlock(lpb.UnlockRequest(key=holder.key), timeout=CALL_TIMEOUT)
    if request.node.callspec.params["server"] == "etcd":  # etcd 3.4: as if it held the lock (a key that is gone)
        assert waiting.result().key == key(b"lost", b)
    else:  # etcdlite, as etcd 3.5's mutex
        with pytest.raises(grpc.RpcError) as err:
            waiting.result()
        assert (err.value.code(), err.value.details()) == (UNKNOWN, "mutex: session is expired")


# --- Election --------------------------------------------------------------


class Observer:
    """Election.Observe's responses, collected by a thread."""

    def __init__(self, api: Api, name: bytes):
        self.call = api.election.Observe(epb.LeaderRequest(name=name), timeout=30)
        self.seen: list[epb.LeaderResponse] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.seen.append(resp)
        except grpc.RpcError:
            pass

    def values(self, n: int) -> list[bytes]:
        wait_until(lambda: len(self.seen) >= n, 10, what=f"{n} observed leaders")
        return [r.kv.value for r in self.seen]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def test_campaign_leader_proclaim_observe_resign(api):
    name = b"elect"
    observer = Observer(api, name)
    try:
        assert error_of(lambda: api.election.Leader(epb.LeaderRequest(name=name), timeout=CALL_TIMEOUT)) == (
            UNKNOWN, "election: no leader")
        a, b = api.grant(), api.grant()
        won = api.election.Campaign(epb.CampaignRequest(name=name, lease=a, value=b"a1"), timeout=CALL_TIMEOUT)
        leader = won.leader
        assert (leader.name, leader.key, leader.lease) == (name, key(name, a), a)
        assert leader.rev == won.header.revision
        assert observer.values(1) == [b"a1"]
        assert observer.seen[0].kv.create_revision == leader.rev

        second = api.election.Campaign.future(epb.CampaignRequest(name=name, lease=b, value=b"b1"),
                                              timeout=CALL_TIMEOUT)
        queued(api, name, key(name, a), key(name, b))
        assert not second.done()

        proclaimed = api.election.Proclaim(epb.ProclaimRequest(leader=leader, value=b"a2"), timeout=CALL_TIMEOUT)
        now = api.election.Leader(epb.LeaderRequest(name=name), timeout=CALL_TIMEOUT)
        assert (now.kv.key, now.kv.value, now.kv.mod_revision) == (leader.key, b"a2", proclaimed.header.revision)
        assert observer.values(2) == [b"a1", b"a2"]
        assert observer.seen[1].header.revision == proclaimed.header.revision

        stale = epb.LeaderKey(name=name, key=leader.key, rev=leader.rev + 1000, lease=a)
        assert error_of(lambda: api.election.Proclaim(epb.ProclaimRequest(leader=stale, value=b"x"),
                                                      timeout=CALL_TIMEOUT)) == (UNKNOWN, "election: not leader")
        # resigning with a stale key changes nothing, without an error
        api.election.Resign(epb.ResignRequest(leader=stale), timeout=CALL_TIMEOUT)
        assert not second.done()
        for call in (lambda: api.election.Proclaim(epb.ProclaimRequest(value=b"x"), timeout=CALL_TIMEOUT),
                     lambda: api.election.Resign(epb.ResignRequest(), timeout=CALL_TIMEOUT)):
            assert error_of(call) == (UNKNOWN, '"leader" field must be provided')

        resigned = api.election.Resign(epb.ResignRequest(leader=leader), timeout=CALL_TIMEOUT)
        elected = second.result()
        next_leader = elected.leader
        created = api.get(key(name, b)).kvs[0].create_revision
        assert (next_leader.key, next_leader.rev, elected.header.revision) == (key(name, b), created, created)
        assert resigned.header.revision > created
        assert observer.values(3) == [b"a1", b"a2", b"b1"]
        api.election.Resign(epb.ResignRequest(leader=next_leader), timeout=CALL_TIMEOUT)
        assert error_of(lambda: api.election.Leader(epb.LeaderRequest(name=name), timeout=CALL_TIMEOUT)) == (
            UNKNOWN, "election: no leader")
        # with no leader the observer waits for the next candidate
        api.election.Campaign(epb.CampaignRequest(name=name, lease=a, value=b"a3"), timeout=CALL_TIMEOUT)
        assert observer.values(4) == [b"a1", b"a2", b"b1", b"a3"]
    finally:
        observer.close()


def test_campaigning_again_with_the_same_lease_proclaims_the_new_value(api):
    a = api.grant()
    first = api.election.Campaign(epb.CampaignRequest(name=b"again", lease=a, value=b"v1"), timeout=CALL_TIMEOUT)
    again = api.election.Campaign(epb.CampaignRequest(name=b"again", lease=a, value=b"v2"), timeout=CALL_TIMEOUT)
    assert again.leader == first.leader
    now = api.election.Leader(epb.LeaderRequest(name=b"again"), timeout=CALL_TIMEOUT)
    assert (now.kv.value, now.kv.version) == (b"v2", 2)
    assert error_of(lambda: api.election.Campaign(epb.CampaignRequest(name=b"again", lease=0x7E57, value=b"v"),
                                                  timeout=CALL_TIMEOUT)) == (
        UNKNOWN, "etcdserver: requested lease not found")


def test_a_leader_key_without_a_lease_proclaims_with_a_new_session_lease(api):
    a = api.grant()
    leader = api.election.Campaign(epb.CampaignRequest(name=b"nolease", lease=a, value=b"v"),
                                   timeout=CALL_TIMEOUT).leader
    bare = epb.LeaderKey(name=leader.name, key=leader.key, rev=leader.rev)  # lease 0
    api.election.Proclaim(epb.ProclaimRequest(leader=bare, value=b"w"), timeout=CALL_TIMEOUT)
    kv = api.get(leader.key).kvs[0]
    # etcd's server makes a session for the call, which grants a lease when given none
    assert kv.value == b"w" and kv.lease not in (0, a)
    ttl = api.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=kv.lease, keys=True), timeout=CALL_TIMEOUT)
    assert (ttl.grantedTTL, list(ttl.keys)) == (60, [leader.key])
    api.election.Resign(epb.ResignRequest(leader=bare), timeout=CALL_TIMEOUT)
    assert api.get(leader.key).kvs == []


def test_a_campaign_given_up_leaves_the_race(api):
    a, b = api.grant(), api.grant()
    api.election.Campaign(epb.CampaignRequest(name=b"quit", lease=a, value=b"a"), timeout=CALL_TIMEOUT)
    waiting = api.election.Campaign.future(epb.CampaignRequest(name=b"quit", lease=b, value=b"b"),
                                           timeout=CALL_TIMEOUT)
    queued(api, b"quit", key(b"quit", a), key(b"quit", b))
    waiting.cancel()
    queued(api, b"quit", key(b"quit", a))


# --- etcdctl lock / elect ---------------------------------------


def _interrupt(proc: BackgroundEtcdctl) -> int:
    """SIGINT, as Ctrl-C: etcdctl unlocks or resigns, closes its session and exits."""
    proc.proc.send_signal(signal.SIGINT)
    return proc.proc.wait(10)


def test_etcdctl_lock_second_holder_only_after_the_first_exits(server, api):
    require_binary(ETCDCTL_BIN, "etcdctl 3.4")
    with BackgroundEtcdctl(server, "lock", "ctl") as first:
        assert first.wait_for(lambda out: out.startswith("ctl/"), 10), first.stderr
        held = first.stdout.strip().encode()
        with BackgroundEtcdctl(server, "lock", "ctl") as second:
            wait_until(lambda: len(api.keys(b"ctl/")) == 2, 10, what="the second etcdctl queued")
            (queued_key,) = api.keys(b"ctl/") - {held}
            assert second.stdout == ""
            assert _interrupt(first) == 0
            assert second.wait_for(lambda out: out.strip() == queued_key.decode(), 10), second.stdout
            assert api.keys(b"ctl/") == {queued_key}
            assert _interrupt(second) == 0
        assert api.keys(b"ctl/") == set()


def test_etcdctl_elect_and_observe(server, api):
    require_binary(ETCDCTL_BIN, "etcdctl 3.4")
    with BackgroundEtcdctl(server, "elect", "-l", "ctlelect") as observer, \
            BackgroundEtcdctl(server, "elect", "ctlelect", "p1") as one:
        assert one.wait_for(lambda out: out.endswith("p1\n"), 10), one.stderr
        assert observer.wait_for(lambda out: out.endswith("p1\n"), 10), observer.stderr
        with BackgroundEtcdctl(server, "elect", "ctlelect", "p2") as two:
            wait_until(lambda: len(api.keys(b"ctlelect/")) == 2, 10, what="the second candidate")
            assert two.stdout == ""
            assert _interrupt(one) == 0
            assert two.wait_for(lambda out: out.endswith("p2\n"), 10), two.stderr
            assert observer.wait_for(lambda out: out.endswith("p2\n"), 10), observer.stdout
            lines = observer.stdout.split()
            assert [lines[1], lines[3]] == ["p1", "p2"] and lines[0].startswith("ctlelect/")


# --- three members -------------------------------------------------------------


def test_lock_through_a_follower_with_an_expiring_holder(procs, tmp_path):
    members = start_etcdlite_cluster(tmp_path, 3, procs)
    leader = leader_of(members)
    follower = next(m for m in members if m is not leader)
    with Api(follower.endpoint) as api, Api(leader.endpoint) as on_leader:
        short, b = api.grant(ttl=2), api.grant()
        holder = api.lock_of(b"cluster", short)  # never kept alive: it expires, on the leader's clock
        waiting = api.lock.Lock.future(lpb.LockRequest(name=b"cluster", lease=b), timeout=CALL_TIMEOUT)
        wait_until(lambda: key(b"cluster", b) in on_leader.keys(b"cluster/"), 10, what="the waiter queued")
        got = waiting.result()
        assert got.key == key(b"cluster", b) and holder.key != got.key
        # let through by the holder's expiry, not before
        assert api.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=short), timeout=CALL_TIMEOUT).TTL == -1
        assert on_leader.keys(b"cluster/") == {got.key}
        api.lock.Unlock(lpb.UnlockRequest(key=got.key), timeout=CALL_TIMEOUT)
        queued(on_leader, b"cluster")
        # an election observed through the follower, campaigned on the leader
        observer = Observer(api, b"cluster-e")
        try:
            won = on_leader.election.Campaign(epb.CampaignRequest(name=b"cluster-e", lease=b, value=b"one"),
                                              timeout=CALL_TIMEOUT)
            assert observer.values(1) == [b"one"]
            on_leader.election.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"two"), timeout=CALL_TIMEOUT)
            assert observer.values(2) == [b"one", b"two"]
        finally:
            observer.close()


# --- auth ------------------------------------------------------------------------

AUTH_SETUP = (
    "user add root --new-user-password=rootpw",
    "user add writer --new-user-password=w",
    "user add reader --new-user-password=r",
    "role add rw",
    "role add ro",
    "role grant-permission rw readwrite app/ --prefix",
    "role grant-permission ro read app/ --prefix",
    "user grant-role writer rw",
    "user grant-role reader ro",
    "auth enable",
)


@pytest.mark.parametrize("kind", ["etcdlite", "etcd"])
def test_with_auth_the_callers_permissions_are_checked(procs, tmp_path, etcdctl, kind):
    if kind == "etcd":
        require_binary(ETCD_BIN, "etcd (the real etcd 3.4 server)")
    m = procs.start_etcdlite(tmp_path) if kind == "etcdlite" else procs.start_real_etcd(tmp_path)
    for args in AUTH_SETUP:
        rc, _, err = etcdctl(m, *args.split())
        assert rc == 0, (args, err)
    with Api(m.endpoint) as api:
        auth = rpc_pb2_grpc.AuthStub(api.channel)

        def as_user(name: str, password: str):
            resp = auth.Authenticate(pb.AuthenticateRequest(name=name, password=password), timeout=CALL_TIMEOUT)
            return (("token", resp.token),)

        writer, reader = as_user("writer", "w"), as_user("reader", "r")
        lease = api.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), metadata=writer, timeout=CALL_TIMEOUT).ID
        got = api.lock.Lock(lpb.LockRequest(name=b"app/l", lease=lease), metadata=writer, timeout=CALL_TIMEOUT)
        assert got.key == key(b"app/l", lease)
        calls = {
            "lock app/l": (api.lock.Lock, lpb.LockRequest(name=b"app/l", lease=lease)),
            "lock other": (api.lock.Lock, lpb.LockRequest(name=b"other", lease=lease)),
            "unlock app/l": (api.lock.Unlock, lpb.UnlockRequest(key=got.key)),
            "campaign app/e": (api.election.Campaign, epb.CampaignRequest(name=b"app/e", lease=lease, value=b"v")),
            "leader app/l": (api.election.Leader, epb.LeaderRequest(name=b"app/l")),
            "leader other": (api.election.Leader, epb.LeaderRequest(name=b"other")),
        }

        def outcome(call, request, metadata):
            try:
                call(request, metadata=metadata, timeout=CALL_TIMEOUT)
            except grpc.RpcError as err:
                return err.details() if err.code() == UNKNOWN else (err.code(), err.details())
            return "ok"

        denied, empty = "etcdserver: permission denied", "etcdserver: user name is empty"
        # what etcd 3.4 answers (its KV checks, under the caller's identity, behind its embedded client)
        assert {what: outcome(*call, reader) for what, call in calls.items()} == {
            "lock app/l": denied, "lock other": denied, "unlock app/l": denied, "campaign app/e": denied,
            "leader app/l": "ok", "leader other": denied}
        assert {what: outcome(*call, ()) for what, call in calls.items()} == dict.fromkeys(calls, empty)
        # Observe ends at once, without an error, when its read is refused (etcd's observe loop stops)
        for metadata in (reader, ()):
            observe = api.election.Observe(epb.LeaderRequest(name=b"other"), metadata=metadata,
                                           timeout=CALL_TIMEOUT)
            assert list(observe) == [] and observe.code() == grpc.StatusCode.OK
        # the refused Unlock left the writer's key; the refused Campaign wrote nothing
        held = api.kv.Range(pb.RangeRequest(key=b"app/", range_end=b"app0"), metadata=writer, timeout=CALL_TIMEOUT)
        assert [kv.key for kv in held.kvs] == [got.key]


def test_a_member_stopped_while_calls_wait_exits_cleanly(procs, tmp_path):
    m = procs.start_etcdlite(tmp_path, name="stopping")
    with Api(m.endpoint) as api:
        a, b = api.grant(), api.grant()
        api.lock_of(b"stop", a)
        waiting = api.lock.Lock.future(lpb.LockRequest(name=b"stop", lease=b), timeout=CALL_TIMEOUT)
        observer = Observer(api, b"stop")
        queued(api, b"stop", key(b"stop", a), key(b"stop", b))
        assert observer.values(1) == [b""]
        # the waiting Lock is cancelled by the shutdown; its clean-up finds Raft stopped
        assert m.terminate() == 0
        with pytest.raises(grpc.RpcError):
            waiting.result()
        observer.close()
    log = m.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
