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
import time
from pathlib import Path

import grpc
import pytest
from test_etcdctl_differential import Normaliser, Session, compare

from etcdlite.pb.authpb import auth_pb2 as authpb
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from harness.procs import ETCDCTL_BIN, Registry, require_binary, run_etcdctl, start_etcdlite_cluster

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
