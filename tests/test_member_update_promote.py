"""MemberUpdate and MemberPromote, and the root role the Cluster service's changes need.

Each scenario runs against an etcdlite member and a real etcd 3.4 member and
wants the same answers (codes and texts): MemberPromote of a voting member
and of an unknown one (learners: test_learners.py); a member's first
peer URL is its Raft address, so MemberUpdate may change the URLs behind it
but not that one (UNIMPLEMENTED, etcdlite's own, checked alone). On three
members an update reaches every member's list.
"""

from __future__ import annotations

import grpc
import pytest

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from harness.etcd_client import Client, error_of, wait_until
from harness.procs import ETCD_BIN, Registry, require_binary, start_etcdlite_cluster

pytestmark = pytest.mark.process

TIMEOUT = 10
UNKNOWN_ID = 0x1234


@pytest.fixture(params=["etcdlite", "etcd"])
def server(request, tmp_path):
    reg = Registry()
    try:
        if request.param == "etcd":
            require_binary(ETCD_BIN, "etcd (the real etcd 3.4 server)")
            yield reg.start_real_etcd(tmp_path, name="mu")
        else:
            yield reg.start_etcdlite(tmp_path, name="mu")
    finally:
        reg.cleanup()


def me(c: Client) -> pb.Member:
    (member,) = c.cluster.MemberList(pb.MemberListRequest(), timeout=TIMEOUT).members
    return member


def test_promote_answers_as_etcd_for_a_voting_member_and_an_unknown_one(server):
    with Client(server.endpoint) as c:
        own = me(c)
        code, details = error_of(lambda: c.cluster.MemberPromote(pb.MemberPromoteRequest(ID=own.ID),
                                                                 timeout=TIMEOUT))
        assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION,
                                   "etcdserver: can only promote a learner member")
        code, details = error_of(lambda: c.cluster.MemberPromote(pb.MemberPromoteRequest(ID=UNKNOWN_ID),
                                                                 timeout=TIMEOUT))
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
        assert me(c) == own


def test_update_changes_the_urls_behind_the_same_first_one(server):
    with Client(server.endpoint) as c:
        own = me(c)
        first = own.peerURLs[0]
        extra = first.rsplit(":", 1)[0] + ":1"  # a second URL, never dialed first
        resp = c.cluster.MemberUpdate(pb.MemberUpdateRequest(ID=own.ID, peerURLs=[first, extra]), timeout=TIMEOUT)
        assert resp.header.member_id == own.ID
        assert [list(m.peerURLs) for m in resp.members] == [[first, extra]]
        assert list(me(c).peerURLs) == [first, extra]
        # and back; the same URLs again change nothing and are no error
        for _ in range(2):
            c.cluster.MemberUpdate(pb.MemberUpdateRequest(ID=own.ID, peerURLs=[first]), timeout=TIMEOUT)
            assert list(me(c).peerURLs) == [first]
        assert c.put(b"after-updates", b"v").header.revision > 0
        code, details = error_of(lambda: c.cluster.MemberUpdate(
            pb.MemberUpdateRequest(ID=UNKNOWN_ID, peerURLs=["http://127.0.0.1:2"]), timeout=TIMEOUT))
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")


def test_membership_changes_need_the_root_role_with_auth_on(server):
    with Client(server.endpoint) as c:
        own = me(c)
        auth = rpc.AuthStub(c.channel)
        for name, password in (("root", "rootpw"), ("alice", "alicepw")):
            auth.UserAdd(pb.AuthUserAddRequest(name=name, password=password), timeout=TIMEOUT)
        auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=TIMEOUT)
        auth.AuthEnable(pb.AuthEnableRequest(), timeout=TIMEOUT)
        calls = {
            "add": lambda md: c.cluster.MemberAdd(pb.MemberAddRequest(peerURLs=["http://127.0.0.1:3"]),
                                                  timeout=TIMEOUT, metadata=md),
            "remove": lambda md: c.cluster.MemberRemove(pb.MemberRemoveRequest(ID=UNKNOWN_ID),
                                                        timeout=TIMEOUT, metadata=md),
            "update": lambda md: c.cluster.MemberUpdate(pb.MemberUpdateRequest(ID=own.ID, peerURLs=own.peerURLs),
                                                        timeout=TIMEOUT, metadata=md),
            "promote": lambda md: c.cluster.MemberPromote(pb.MemberPromoteRequest(ID=own.ID),
                                                          timeout=TIMEOUT, metadata=md),
        }
        tokens = {name: auth.Authenticate(pb.AuthenticateRequest(name=name, password=f"{name}pw"),
                                          timeout=TIMEOUT).token for name in ("root", "alice")}
        for what, call in calls.items():
            assert error_of(lambda: call(())) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                  "etcdserver: user name is empty"), what
            assert error_of(lambda: call((("token", tokens["alice"]),))) == (
                grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied"), what
        # root gets past the check: to each call's own answer
        root = (("token", tokens["root"]),)
        assert error_of(lambda: calls["remove"](root)) == (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
        assert error_of(lambda: calls["promote"](root))[0] == grpc.StatusCode.FAILED_PRECONDITION
        assert [m.ID for m in calls["update"](root).members] == [own.ID]
        # everyone may list
        assert [m.ID for m in c.cluster.MemberList(pb.MemberListRequest(), timeout=TIMEOUT,
                                                   metadata=(("token", tokens["alice"]),)).members] == [own.ID]


def test_a_new_first_url_is_refused_and_an_update_reaches_every_member(tmp_path):
    reg = Registry()
    try:
        members = start_etcdlite_cluster(tmp_path, 3, reg, name="mu")
        with Client(members[0].endpoint) as c:
            listed = c.cluster.MemberList(pb.MemberListRequest(), timeout=TIMEOUT).members
            target = listed[1]
            code, details = error_of(lambda: c.cluster.MemberUpdate(
                pb.MemberUpdateRequest(ID=target.ID, peerURLs=["http://127.0.0.1:4"]), timeout=TIMEOUT))
            assert code == grpc.StatusCode.UNIMPLEMENTED and "Raft address" in details
            # another member's URL: etcd's error first
            code, details = error_of(lambda: c.cluster.MemberUpdate(
                pb.MemberUpdateRequest(ID=target.ID, peerURLs=list(listed[0].peerURLs)), timeout=TIMEOUT))
            assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
            urls = [target.peerURLs[0], "http://127.0.0.1:5"]
            c.cluster.MemberUpdate(pb.MemberUpdateRequest(ID=target.ID, peerURLs=urls), timeout=TIMEOUT)
        for m in members:
            with Client(m.endpoint) as other:
                def updated():
                    got = other.cluster.MemberList(pb.MemberListRequest(), timeout=TIMEOUT).members
                    return [list(x.peerURLs) for x in got if x.ID == target.ID] == [urls]
                wait_until(updated, 10, what=f"the update on {m.name}")
                assert other.put(b"k", m.name.encode()).header.revision > 0  # Raft unchanged: still serving
    finally:
        reg.cleanup()
