"""etcd's auth in etcdlite.

The differential test runs one etcdctl 3.4 auth session (users, roles with
key, range and prefix permissions, auth enable, KV calls as each user,
permission denied, auth disable) against a fresh real etcd and a fresh
etcdlite member and wants the same normalised transcript (the normaliser and
session of test_etcdctl_differential). The cluster tests check what the
session cannot show: auth state replicated to every member and kept through a
restart and a Raft snapshot, tokens working on every member, refused watches
and forged tokens, and passwords kept out of the data directory.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import grpc
import pytest
from test_etcdctl_differential import Normaliser, Session, compare

from etcdlite.pb.authpb import auth_pb2 as authpb
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from harness.procs import ETCDCTL_BIN, Member, require_binary, run_etcdctl, start_etcdlite_cluster

ROOT = "--user=root:rootpw"
ALICE = "--user=alice:alicepw"
BOB = "--user=bob:bobpw"


def auth_script(s: Session) -> None:
    c = s.ctl
    # --- users and roles, auth disabled ----------------------------------------
    c("auth enable")                                       # error: no root user
    c("user add root --new-user-password=rootpw")
    c("user add alice --new-user-password=alicepw")
    c("user add bob --new-user-password=bobpw")
    c("user add carol --no-password")
    c("user add root --new-user-password=again")          # error: exists
    c("role add writer")
    c("role add reader")
    c("role add reader")                                   # error: exists
    c("role grant-permission writer readwrite foo --prefix")
    c("role grant-permission writer write z --from-key")
    c("role grant-permission reader read foo --prefix")
    c("role grant-permission reader read bar")
    c("role grant-permission reader read k1 k5")
    c("role grant-permission reader read k5 k7")
    c("role grant-permission reader write bar")           # bar: read becomes write
    c("role grant-permission reader read bar")            # ... and read again
    c("role grant-permission nosuch read foo")             # error: no role
    c("role get writer")
    c("role get reader")
    c("role get reader -w json")
    c("role get nosuch")
    c("role list")
    c("user grant-role alice writer")
    c("user grant-role bob reader")
    c("user grant-role bob reader")                        # granted already: no error
    c("user grant-role bob nosuch")                        # error: no role
    c("user grant-role nosuch reader")                     # error: no user
    c("user get alice")
    c("user get bob --detail")
    c("user get nosuch")
    c("user list")
    c("put foo1 v1")
    c("put bar b1")
    c("put k3 v3")
    c("put zz z1")
    c("get foo1 --user=alice:alicepw")                     # auth disabled: the user is ignored
    # --- enabling ----------------------------------------------------------------
    # etcdctl meets "root user does not have root role", adds the role, grants it, enables
    c("auth enable")
    c("auth enable --user=root:rootpw")                    # already: no error
    c("user grant-role root root")                         # nobody: user name is empty
    c(f"user get root {ROOT}")
    c(f"role get root {ROOT}")
    # --- as users ----------------------------------------------------------------
    c("get foo1")                                          # nobody: user name is empty
    c("put foo1 v")
    c(f"put foo1 v2 {ALICE}")
    c(f"put foo2 v2 {ALICE} --prev-kv")
    c(f"put bar b2 {ALICE}")                               # denied
    c(f"get foo --prefix {ALICE}")
    c(f"get bar {ALICE}")                                  # denied
    c(f"put zz z2 {ALICE}")                                # from-key write
    c(f"get zz {ALICE}")                                   # write only: denied
    c(f"get foo --prefix {BOB}")
    c(f"get foo --prefix --keys-only -w json {BOB}")
    c(f"put foo1 x {BOB}")                                 # denied: read only
    c(f"get bar {BOB}")
    c(f"get k1 k7 {BOB}")                                  # [k1,k5) + [k5,k7): covered
    c(f"get k1 k8 {BOB}")                                  # denied
    c(f"get k0 k3 {BOB}")                                  # denied
    c(f"get foo --from-key {BOB}")                         # denied
    c(f"get foo1 --user=alice:wrong")                      # authentication failed
    c("get foo1 --user=nobody:x")                          # authentication failed
    c(f"del foo2 {ALICE}")
    c(f"del foo --prefix {BOB}")                           # denied
    c(f"del bar {ALICE}")                                  # denied
    c(f"txn {ALICE}", stdin='value("foo1") = "v2"\n\nput foo1 v3\n\nput foo9 v9\n\n')
    c(f"txn {ALICE}", stdin='value("bar") = "b1"\n\nput foo1 v4\n\n\n')     # denied: compare
    c(f"txn {ALICE}", stdin='\nput foo1 v4\n\nput bar v\n\n')               # denied: failure op
    c(f"get foo1 {ROOT}")
    c(f"get '' --from-key {ROOT}")
    # --- watches: checked when created ---------------------------------------------
    s.watch(f"watch foo1 --rev=1 {BOB}", lambda out: "v3" in out)
    s.watch(f"watch bar0 bar9 {ALICE}", lambda out: "canceled" in out)   # refused: etcdctl exits
    s.watch(f"watch foo --prefix --rev=1 --user=bob:wrong", lambda out: "failed" in out)
    # --- leases --------------------------------------------------------------------
    s.grant("L1", f"lease grant 600 {ALICE}")
    c(f"put foo5 v5 --lease={{L1}} {ALICE}")
    c(f"lease revoke {{L1}} {BOB}")                        # denied: bob may not write foo5
    c(f"lease revoke {{L1}} {ALICE}")
    # --- admin calls ---------------------------------------------------------------
    c(f"user list {BOB}")                                  # denied
    c(f"user get bob {BOB}")                               # one's own user
    c(f"user get alice {BOB}")                             # denied
    c(f"role get reader {BOB}")                            # one's own role
    c(f"role get writer {BOB}")                            # denied
    c(f"user add eve --new-user-password=x {BOB}")         # denied
    c(f"auth disable {ALICE}")                             # denied
    c(f"user list {ROOT}")
    c(f"role list {ROOT}")
    c(f"user delete root {ROOT}")                          # invalid auth management
    c(f"user revoke-role root root {ROOT}")                # invalid auth management
    c(f"role delete root {ROOT}")                          # invalid auth management
    c(f"role revoke-permission reader bar {ROOT}")
    c(f"role revoke-permission reader bar {ROOT}")         # not granted
    c(f"role revoke-permission nosuch bar {ROOT}")         # no role
    c(f"get bar {BOB}")                                    # denied now
    c(f"user revoke-role bob reader {ROOT}")
    c(f"user revoke-role bob reader {ROOT}")               # not granted
    c(f"get foo1 {BOB}")                                   # denied: no role left
    c(f"user passwd alice --interactive=false {ROOT}", stdin="alicepw2\n")
    c(f"get foo1 {ALICE}")                                 # old password: failed
    c("get foo1 --user=alice:alicepw2")
    c(f"endpoint hashkv --user=alice:alicepw2")           # denied (root only)
    c(f"endpoint hashkv {ROOT}")
    c(f"snapshot save {{SNAP}} {BOB}")                     # denied (root only)
    c(f"defrag {BOB}")                                     # denied (root only)
    c(f"defrag {ROOT}")
    c(f"endpoint status {BOB}")                            # not checked
    c(f"member list {BOB}")                                # not checked
    c(f"compaction 3 {BOB}")                               # etcd 3.4 lets any user compact
    c(f"role delete writer {ROOT}")
    c(f"user get alice {ROOT}")                            # the role is gone from alice
    c(f"user delete bob {ROOT}")
    c(f"user delete bob {ROOT}")                           # no user
    c(f"user list {ROOT}")
    # --- disabling -----------------------------------------------------------------
    c(f"auth disable {ROOT}")
    c("get foo --prefix")
    c("auth disable")
    c("user list")
    c("role list")
    c("user get root --detail")


def run_auth_session(member, workdir: Path, label: str) -> tuple[list[str], Session]:
    s = Session(member, workdir, label)
    auth_script(s)
    blocks = Normaliser(s.entries, member, s.snapdir).render_all(s.entries)
    (workdir / "transcript.normalised.txt").write_text("\n".join(blocks) + "\n")
    return blocks, s


@pytest.mark.process
def test_etcdctl_auth_session_matches_real_etcd(procs, tmp_path, monkeypatch):
    require_binary(ETCDCTL_BIN, "etcdctl 3.4")
    monkeypatch.setattr("test_etcdctl_differential.SESSION_BUDGET", 120.0)
    ref = procs.start_real_etcd(tmp_path / "ref", name="auth0")
    ref_blocks, _ = run_auth_session(ref, tmp_path / "ref", "real etcd")
    ref.kill()
    target = os.environ.get("ETCDLITE_DIFF_TARGET", "etcdlite")
    if target == "real":
        got = procs.start_real_etcd(tmp_path / "got", name="auth0")
    else:
        got = procs.start_etcdlite(tmp_path / "got", name="auth0")
    got_blocks, _ = run_auth_session(got, tmp_path / "got", target)
    got.kill()
    problem = compare(ref_blocks, got_blocks, "real-etcd (normalised)", f"{target} (normalised)", tmp_path)
    if problem:
        pytest.fail(problem, pytrace=False)


# ---------------------------------------------------------------------------
# over gRPC: clusters, restarts, snapshots, watches, tokens

ALICE_PASSWORD = "alice-Secret-7c1e"  # must never be found in a data directory


class AuthClient:
    """One member's stubs; calls carry `token` when given."""

    def __init__(self, endpoint: str):
        self.channel = grpc.insecure_channel(endpoint)
        self.kv = rpc.KVStub(self.channel)
        self.auth = rpc.AuthStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)

    def login(self, name: str, password: str) -> list:
        token = self.auth.Authenticate(pb.AuthenticateRequest(name=name, password=password), timeout=10).token
        return [("token", token)]

    def close(self) -> None:
        self.channel.close()


def rpc_error(call, *args, **kw) -> tuple[grpc.StatusCode, str]:
    try:
        call(*args, timeout=10, **kw)
    except grpc.RpcError as err:
        return err.code(), err.details()
    raise AssertionError(f"{call} succeeded")


DENIED = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
EMPTY_USER = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
BAD_TOKEN = (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")


def set_up_auth(c: AuthClient) -> None:
    """root, and alice with read-write on the prefix app/; auth enabled."""
    a = c.auth
    a.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"), timeout=10)
    a.UserAdd(pb.AuthUserAddRequest(name="alice", password=ALICE_PASSWORD), timeout=10)
    a.RoleAdd(pb.AuthRoleAddRequest(name="app"), timeout=10)
    a.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="app", perm=authpb.Permission(
        permType=authpb.Permission.READWRITE, key=b"app/", range_end=b"app0")), timeout=10)
    a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="app"), timeout=10)
    a.AuthEnable(pb.AuthEnableRequest(), timeout=10)


def check_auth_state(c: AuthClient) -> None:
    """What set_up_auth made, as this member enforces it."""
    alice = c.login("alice", ALICE_PASSWORD)
    root = c.login("root", "rootpw")
    assert rpc_error(c.kv.Range, pb.RangeRequest(key=b"app/1")) == EMPTY_USER
    c.kv.Range(pb.RangeRequest(key=b"app/", range_end=b"app0"), metadata=alice, timeout=10)
    assert rpc_error(c.kv.Range, pb.RangeRequest(key=b"other"), metadata=alice) == DENIED
    assert rpc_error(c.kv.Put, pb.PutRequest(key=b"other", value=b"v"), metadata=alice) == DENIED
    assert rpc_error(c.auth.UserList, pb.AuthUserListRequest(), metadata=alice) == DENIED
    assert list(c.auth.UserList(pb.AuthUserListRequest(), metadata=root, timeout=10).users) == ["alice", "root"]
    perms = c.auth.RoleGet(pb.AuthRoleGetRequest(role="app"), metadata=root, timeout=10).perm
    assert [(p.key, p.range_end, p.permType) for p in perms] == [(b"app/", b"app0", authpb.Permission.READWRITE)]
    assert rpc_error(c.auth.Authenticate, pb.AuthenticateRequest(name="alice", password="wrong")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")


def files_holding(root: Path, secret: bytes) -> list[str]:
    """Files under `root` holding `secret`, also inside gzip streams (snapshots)."""
    import gzip

    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            try:
                data += gzip.decompress(data)
            except (OSError, EOFError):
                pass
        if secret in data:
            found.append(str(path))
    return found


@pytest.mark.process
def test_auth_is_replicated_and_survives_restart_and_snapshot(procs, tmp_path):
    members = start_etcdlite_cluster(tmp_path, 3, procs, snapshot_count=50)
    clients = [AuthClient(m.endpoint) for m in members]
    try:
        set_up_auth(clients[0])
        # every member holds the same users, roles and permissions
        for c in clients:
            check_auth_state(c)
        # a token given by one member works on every member: assigned through Raft
        alice = clients[1].login("alice", ALICE_PASSWORD)
        for i, c in enumerate(clients):
            c.kv.Put(pb.PutRequest(key=b"app/from-%d" % i, value=b"v"), metadata=alice, timeout=10)
        # enough writes that every member snapshots and drops the log holding the auth commands
        for i in range(200):
            clients[i % 3].kv.Put(pb.PutRequest(key=b"app/k%d" % (i % 7), value=b"%d" % i), metadata=alice, timeout=10)
        for m in members:
            assert (m.data_dir / "raft.snapshot").exists(), f"{m.name} made no snapshot"
        # a member added now gets the auth state from a snapshot, the log before it being gone
        new = Member("etcdlite", "m3", tmp_path, dict(members[0].extra_flags, initial_cluster_state="existing"),
                     procs)
        # membership changes need the root role with auth on, as etcd's
        rc, out, err = run_etcdctl(members[0], "member", "add", "m3", f"--peer-urls={new.peer_url}", ROOT)
        assert rc == 0, err
        new.initial_cluster = re.search(r'ETCD_INITIAL_CLUSTER="([^"]+)"', out).group(1)
        new.start()
        assert (new.data_dir / "raft.snapshot").exists(), "the new member did not get a snapshot"
        members.append(new)
        clients.append(AuthClient(new.endpoint))
        check_auth_state(clients[-1])
    finally:
        for c in clients:
            c.close()
    for m in members:
        m.kill()
    for m in members:
        m.launch()
    for m in members:
        m.wait_ready()
    clients = [AuthClient(m.endpoint) for m in members]
    try:
        for c in clients:
            check_auth_state(c)
        # a change after the restart reaches every member
        root = clients[2].login("root", "rootpw")
        clients[2].auth.UserDelete(pb.AuthUserDeleteRequest(name="alice"), metadata=root, timeout=10)
        for c in clients:
            assert rpc_error(c.auth.Authenticate, pb.AuthenticateRequest(name="alice", password=ALICE_PASSWORD))[1] \
                == "etcdserver: authentication failed, invalid user ID or password"
    finally:
        for c in clients:
            c.close()
    for m in members:
        m.kill()
    # the journal and the snapshots hold password hashes, never the password
    assert files_holding(tmp_path, ALICE_PASSWORD.encode()) == []


def _watch_first_response(c: AuthClient, metadata, key: bytes, range_end: bytes = b"") -> pb.WatchResponse:
    """The first response of a watch stream that asks for key..range_end."""
    import queue

    requests: queue.Queue = queue.Queue()
    requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=range_end)))

    def feed():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    stream = c.watch.Watch(feed(), metadata=metadata, timeout=10)
    try:
        return next(stream)
    finally:
        requests.put(None)
        stream.cancel()


@pytest.mark.parametrize("kind", ["etcd", "etcdlite"])
@pytest.mark.process
def test_watch_without_read_permission_is_refused(procs, tmp_path, kind):
    m = procs.start_real_etcd(tmp_path, name="w") if kind == "etcd" else procs.start_etcdlite(tmp_path, name="w")
    c = AuthClient(m.endpoint)
    try:
        set_up_auth(c)
        alice = c.login("alice", ALICE_PASSWORD)
        refused = _watch_first_response(c, alice, b"secret/", b"secret0")
        assert (refused.created, refused.canceled, refused.watch_id) == (True, True, -1)
        # etcd's reason is its gRPC error as Go prints it
        assert refused.cancel_reason == "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
        nobody = _watch_first_response(c, [], b"app/x")
        assert (nobody.canceled, nobody.cancel_reason) == (
            True, "rpc error: code = InvalidArgument desc = etcdserver: user name is empty")
        allowed = _watch_first_response(c, alice, b"app/", b"app0")
        assert (allowed.created, allowed.canceled) == (True, False)
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["etcd", "etcdlite"])
@pytest.mark.process
def test_forged_and_stale_tokens_are_refused(procs, tmp_path, kind):
    m = procs.start_real_etcd(tmp_path, name="t") if kind == "etcd" else procs.start_etcdlite(tmp_path, name="t")
    c = AuthClient(m.endpoint)
    try:
        set_up_auth(c)
        alice = c.login("alice", ALICE_PASSWORD)
        token = alice[0][1]
        prefix, _, number = token.partition(".")
        forged = [
            "abcdefghijklmnop.1",                                 # made up
            prefix[::-1] + "." + number,                           # a real number, another prefix
            prefix + "." + str(int(number) - 1),                  # a real prefix, another number
            token + "x",
            "",
        ]
        for t in forged:
            for call, request in ((c.kv.Range, pb.RangeRequest(key=b"app/1")),
                                  (c.kv.Put, pb.PutRequest(key=b"app/1", value=b"v"))):
                assert rpc_error(call, request, metadata=[("token", t)]) == BAD_TOKEN, (t, call)
        c.kv.Put(pb.PutRequest(key=b"app/1", value=b"v"), metadata=alice, timeout=10)
        # a password change ends the user's tokens
        root = c.login("root", "rootpw")
        c.auth.UserChangePassword(pb.AuthUserChangePasswordRequest(name="alice", password="new"), metadata=root,
                                  timeout=10)
        assert rpc_error(c.kv.Range, pb.RangeRequest(key=b"app/1"), metadata=alice) == BAD_TOKEN
        c.login("alice", "new")
        # auth disabled: every token is forgotten, and a token sent is still refused
        c.auth.AuthDisable(pb.AuthDisableRequest(), metadata=root, timeout=10)
        assert rpc_error(c.kv.Range, pb.RangeRequest(key=b"app/1"), metadata=root) == BAD_TOKEN
        c.kv.Range(pb.RangeRequest(key=b"app/1"), timeout=10)
    finally:
        c.close()


@pytest.mark.process
def test_simple_tokens_expire_after_their_ttl(procs, tmp_path):
    m = procs.start_etcdlite(tmp_path, name="ttl", auth_token_ttl=2)
    c = AuthClient(m.endpoint)
    try:
        set_up_auth(c)
        alice = c.login("alice", ALICE_PASSWORD)
        # used within its TTL, a token lives on
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            c.kv.Range(pb.RangeRequest(key=b"app/1"), metadata=alice, timeout=10)
            time.sleep(0.5)
        # left unused for longer than its TTL, it is gone
        time.sleep(3.5)
        assert rpc_error(c.kv.Range, pb.RangeRequest(key=b"app/1"), metadata=alice) == BAD_TOKEN
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["etcd", "etcdlite", "etcdlite-grpcio"])
@pytest.mark.process
def test_client_certificate_common_name_is_the_user(procs, tmp_path, kind):
    """With --client-cert-auth, a call without a token is the user its
    verified certificate names (CN), as etcd does (on both of etcdlite's
    gRPC servers)."""
    from test_client_tls import CA, TLSMember, client_creds

    from harness.procs import DEFAULT_READY_TIMEOUT

    ca = CA(tmp_path, "auth-ca")
    server_cert, server_key = ca.issue("server", server=True)
    certs = {cn: ca.issue(cn, server=False) for cn in ("root", "alice", "mallory")}
    flags = dict(cert_file=server_cert, key_file=server_key, trusted_ca_file=ca.path, client_cert_auth=True)
    if kind == "etcdlite-grpcio":
        kind, flags["experimental_grpc_server"] = "etcdlite", "grpcio"
    m = TLSMember(kind, "cn0", tmp_path, flags, procs, DEFAULT_READY_TIMEOUT)
    m.probe_ca, m.probe_cert = ca.path, certs["mallory"]
    m.start()
    channels = {cn: grpc.secure_channel(m.endpoint, client_creds(ca.path, cert)) for cn, cert in certs.items()}
    try:
        kv = {cn: rpc.KVStub(ch) for cn, ch in channels.items()}
        auth = {cn: rpc.AuthStub(ch) for cn, ch in channels.items()}
        c = AuthClient.__new__(AuthClient)
        c.auth, c.kv = auth["root"], kv["root"]
        set_up_auth(c)
        kv["alice"].Put(pb.PutRequest(key=b"app/1", value=b"v"), timeout=10)
        assert rpc_error(kv["alice"].Range, pb.RangeRequest(key=b"other")) == DENIED
        assert rpc_error(auth["alice"].UserList, pb.AuthUserListRequest()) == DENIED
        assert list(auth["root"].UserList(pb.AuthUserListRequest(), timeout=10).users) == ["alice", "root"]
        # a name that is no user may do nothing
        assert rpc_error(kv["mallory"].Range, pb.RangeRequest(key=b"app/1")) == DENIED
        # a token, when given, names the user instead
        root = c.login("root", "rootpw")
        assert list(auth["alice"].UserList(pb.AuthUserListRequest(), metadata=root, timeout=10).users) == \
            ["alice", "root"]
    finally:
        for ch in channels.values():
            ch.close()
