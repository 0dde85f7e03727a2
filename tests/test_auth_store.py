"""The auth store and its commands without a server: permission intervals as
etcd 3.4 merges them, the root rules, what members must agree on, what
snapshots keep, and the password hashes."""

from __future__ import annotations

import pickle

import pytest

from etcdlite import errors
from etcdlite.apply import Op, StateMachine
from etcdlite.auth_apply import AuthOp
from etcdlite.auth_store import READ, READWRITE, WRITE, AuthInfo, _UserPerms, _interval
from etcdlite.passwords import check_password, hash_password
from etcdlite.pb.authpb import auth_pb2 as authpb
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb


def perms(*spans: tuple[bytes, bytes]) -> _UserPerms:
    """Read permissions over (key, range_end) spans, as roles grant them."""
    return _UserPerms(False, [_interval(k, e) for k, e in spans], [])


@pytest.mark.parametrize("spans, key, range_end, allowed", [
    # a range must be covered without a gap
    ([(b"a", b"c"), (b"x", b"z")], b"a", b"z", False),
    ([(b"a", b"f"), (b"c", b"d"), (b"f", b"z")], b"a", b"z", True),   # touching ends join
    ([(b"a", b"d"), (b"a", b"b"), (b"c", b"f")], b"a", b"f", True),
    ([(b"a", b"d"), (b"e", b"f")], b"a", b"f", False),
    ([(b"b", b"d")], b"a", b"c", False),                               # starts before the grant
    # one key: any grant holding it
    ([(b"a", b"c"), (b"x", b"z")], b"f", b"", False),
    ([(b"a", b"d"), (b"c", b"f")], b"d", b"", True),
    ([(b"a", b"d"), (b"c", b"f")], b"f", b"", False),                  # range ends are open
    ([(b"key", b"")], b"key", b"", True),                              # a one-key grant
    ([(b"key", b"")], b"key0", b"", False),
    ([(b"key", b"")], b"key", b"key\x00", True),                       # the same as a range
    ([(b"key", b"")], b"key", b"kez", False),
    # from a key on (range_end "\0"), granted or asked
    ([(b"m", b"\x00")], b"zzz", b"", True),
    ([(b"m", b"\x00")], b"m", b"\x00", True),
    ([(b"m", b"\x00")], b"a", b"\x00", False),
    ([(b"m", b"z")], b"m", b"\x00", False),
    ([(b"a", b"m"), (b"m", b"\x00")], b"a", b"\x00", True),
])
def test_permissions_cover_what_etcd_covers(spans, key, range_end, allowed):
    assert perms(*spans).allows(key, range_end, READ) is allowed


def S(request) -> bytes:
    return request.SerializeToString()


def grant(role: str, kind: int, key: bytes, range_end: bytes = b"") -> tuple:
    return (AuthOp.ROLE_GRANT_PERMISSION, S(pb.AuthRoleGrantPermissionRequest(
        name=role, perm=authpb.Permission(permType=kind, key=key, range_end=range_end))))


SETUP = [
    (AuthOp.USER_ADD, S(pb.AuthUserAddRequest(name="root", hashedPassword="h-root"))),
    (AuthOp.USER_ADD, S(pb.AuthUserAddRequest(name="alice", hashedPassword="h-alice"))),
    (AuthOp.ROLE_ADD, S(pb.AuthRoleAddRequest(name="app"))),
    grant("app", READWRITE, b"app/", b"app0"),
    grant("app", READ, b"conf"),
    (AuthOp.USER_GRANT_ROLE, S(pb.AuthUserGrantRoleRequest(user="alice", role="app"))),
    (AuthOp.USER_GRANT_ROLE, S(pb.AuthUserGrantRoleRequest(user="root", role="root"))),
    (AuthOp.AUTH_ENABLE, b""),
]


def applied(machine: StateMachine, *commands) -> list:
    return [result for _, result, _, _ in machine.apply_batch(list(commands))]


def enabled_machine() -> StateMachine:
    m = StateMachine()
    results = applied(m, *SETUP)
    assert not any(isinstance(r, errors.EtcdError) for r in results), results
    assert m.auth.enabled
    return m


def put(key: bytes, *sender) -> tuple:
    return (Op.PUT, S(pb.PutRequest(key=key, value=b"v")), *sender)


def test_writes_are_checked_where_applied():
    m = enabled_machine()
    rev = m.auth.revision
    got = applied(
        m,
        (Op.PUT_VALUE, b"app/1", b"v"),              # sent while auth was off: nobody's
        put(b"app/1"),                               # no sender
        put(b"app/1", "alice", rev),
        put(b"conf", "alice", rev),                  # read only
        put(b"other", "alice", rev),
        put(b"app/2", "alice", rev - 1),             # checked before the last change
        put(b"other", "root", rev),                  # root may do anything
        put(b"app/3", "mallory", rev),               # no such user
        (Op.DELETE_RANGE, S(pb.DeleteRangeRequest(key=b"app/", range_end=b"app0")), "alice", rev),
        (Op.DELETE_RANGE, S(pb.DeleteRangeRequest(key=b"a", range_end=b"z")), "alice", rev),
    )
    assert got[0] == errors.USER_EMPTY and got[1] == errors.USER_EMPTY
    assert isinstance(got[2], int)
    assert got[3] == errors.PERMISSION_DENIED and got[4] == errors.PERMISSION_DENIED
    assert got[5] == errors.AUTH_OLD_REVISION
    assert isinstance(got[6], int)
    assert got[7] == errors.PERMISSION_DENIED
    assert got[8].deleted == 1
    assert got[9] == errors.PERMISSION_DENIED
    # nothing refused was written
    assert [kv.key for kv in m.kv.range(b"\x00", b"\xff").kvs] == [b"other"]


def test_a_txn_needs_its_compares_and_every_op_nested_ones_too():
    m = enabled_machine()
    rev = m.auth.revision

    def txn(compare_key: bytes, put_key: bytes, nested_key: bytes | None = None) -> tuple:
        t = pb.TxnRequest(compare=[pb.Compare(key=compare_key, target=pb.Compare.VERSION, version=0)],
                          success=[pb.RequestOp(request_put=pb.PutRequest(key=put_key, value=b"v"))])
        if nested_key is not None:
            inner = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=nested_key, value=b"v"))])
            t.failure.add().request_txn.CopyFrom(inner)
        return (Op.TXN, S(t), "alice", rev)

    got = applied(m, txn(b"conf", b"app/1"), txn(b"secret", b"app/1"), txn(b"conf", b"secret"),
                  txn(b"conf", b"app/2", nested_key=b"secret"))
    assert got[0].succeeded
    assert got[1:] == [errors.PERMISSION_DENIED] * 3


def test_admin_commands_need_the_root_role_and_keep_root():
    m = enabled_machine()
    rev = m.auth.revision
    add_role = (AuthOp.ROLE_ADD, S(pb.AuthRoleAddRequest(name="ops")))
    got = applied(
        m,
        add_role,
        (*add_role, "alice", rev),
        (*add_role, "mallory", rev),
        (*add_role, "root", rev),
        (AuthOp.USER_DELETE, S(pb.AuthUserDeleteRequest(name="root")), "root", rev),
        (AuthOp.USER_REVOKE_ROLE, S(pb.AuthUserRevokeRoleRequest(name="root", role="root")), "root", rev),
        (AuthOp.ROLE_DELETE, S(pb.AuthRoleDeleteRequest(role="root")), "root", rev),
    )
    assert got[:3] == [errors.USER_EMPTY, errors.PERMISSION_DENIED, errors.USER_NOT_FOUND]
    assert isinstance(got[3], pb.AuthRoleAddResponse)
    assert got[4:] == [errors.INVALID_AUTH_MGMT] * 3


def test_enabling_needs_root_with_the_root_role():
    m = StateMachine()
    enable = (AuthOp.AUTH_ENABLE, b"")
    assert applied(m, enable) == [errors.ROOT_USER_NOT_EXIST]
    applied(m, (AuthOp.USER_ADD, S(pb.AuthUserAddRequest(name="root", hashedPassword="h"))))
    assert applied(m, enable) == [errors.ROOT_ROLE_NOT_EXIST]
    assert not m.auth.enabled


def test_members_applying_the_same_commands_agree_and_snapshots_keep_all_but_tokens():
    a, b = enabled_machine(), enabled_machine()
    rev = a.auth.revision
    more = [
        (AuthOp.AUTHENTICATE, S(pb.AuthenticateRequest(name="alice")), "PrefixPrefixPref", rev),
        (*grant("app", WRITE, b"logs/", b"logs0"), "root", rev),
        (AuthOp.USER_REVOKE_ROLE, S(pb.AuthUserRevokeRoleRequest(name="alice", role="app")), "root", rev),
    ]
    results = [str(r) for r in applied(a, *more)]
    assert results == [str(r) for r in applied(b, *more)]
    assert not any(r.startswith("etcdserver") for r in results), results
    assert a.auth.tokens == b.auth.tokens == {"PrefixPrefixPref.1": "alice"}
    assert pickle.dumps(a.auth) == pickle.dumps(b.auth)
    restored = pickle.loads(pickle.dumps(a))
    assert restored.auth.tokens == {}  # member-local: not in snapshots
    assert restored.auth.users == a.auth.users and restored.auth.roles == a.auth.roles
    assert (restored.auth.enabled, restored.auth.revision, restored.auth.token_seq) == (True, rev + 2, 1)
    # the merged permissions are rebuilt from what was kept
    assert restored.auth._perms["root"].root
    with pytest.raises(errors.EtcdError):
        restored.auth.check(AuthInfo("alice", rev + 2), b"app/1", b"", READ)


def test_a_snapshot_from_before_auth_loads_with_auth_disabled():
    m = StateMachine()
    state = m.__dict__.copy()
    del state["auth"]
    old = StateMachine.__new__(StateMachine)
    old.__setstate__(state)
    assert not old.auth.enabled and old.auth.users == {}


def test_authenticate_refuses_a_password_checked_at_an_older_revision():
    m = enabled_machine()
    rev = m.auth.revision
    got = applied(m, (AuthOp.AUTHENTICATE, S(pb.AuthenticateRequest(name="alice")), "p" * 16, rev - 1),
                  (AuthOp.AUTHENTICATE, S(pb.AuthenticateRequest(name="nobody")), "p" * 16, rev))
    assert got == [errors.AUTH_OLD_REVISION, errors.AUTH_FAILED]
    assert m.auth.tokens == {}


def test_password_hashes_are_salted_and_checked():
    first, second = hash_password("s3cret", log2_n=10), hash_password("s3cret", log2_n=10)
    assert first != second and "s3cret" not in first
    assert check_password("s3cret", first) and check_password("s3cret", second.encode())
    assert not check_password("S3cret", first)
    assert not check_password("s3cret", "$2a$10$an-etcd-bcrypt-hash")
    assert not check_password("s3cret", "scrypt$99$8$1$AAAA$AAAA")  # beyond the costs accepted


def test_token_flags_as_etcds():
    from etcdlite.cli import build_parser, config_from_args
    from etcdlite.config import ConfigError

    def cfg(*argv):
        return config_from_args(build_parser().parse_args(["--data-dir", "unused", *argv]))

    assert cfg().auth_token_ttl == 300
    assert cfg("--auth-token", "simple", "--auth-token-ttl", "20").auth_token_ttl == 20
    with pytest.raises(ConfigError, match="cannot read app.rsa"):  # JWTs: tests/test_jwt_tokens.py
        cfg("--auth-token", "jwt,pub-key=app.rsa.pub,priv-key=app.rsa,sign-method=RS512")
    with pytest.raises(ConfigError, match="positive"):
        cfg("--auth-token-ttl", "0")
