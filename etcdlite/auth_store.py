"""etcd's auth store: users, roles with key-range permissions, whether auth
is enabled, and the auth revision, as part of the replicated state machine
(changed only by applied commands, so every member holds the same; pickled
with it into snapshots).

Rules as etcd 3.4's (auth/store.go, auth/range_perm_cache.go): the root user
with the root role may do anything; another user may read or write a key or
a range only when the union of its roles' permissions of that kind covers
it; an empty range end is one key, a range end of "\\0" means "every key
from here on". Every change of users or roles moves the revision, and a
request checked against an older revision than the store's is refused
(`AUTH_OLD_REVISION`), as etcd does.

Simple tokens are the one member-local part: assigned to a user when an
Authenticate is applied (on every member, as etcd does, so a token works on
any member), dropped when the user is deleted or changes password, when auth
is disabled, or when the member's token clock (etcdlite.server.auth) lets
them expire. They are left out of snapshots.
"""

from __future__ import annotations

from typing import NamedTuple

from etcdlite import errors
from etcdlite.pb.authpb import auth_pb2 as authpb
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

ROOT = "root"  # etcd's root user and root role
READ, WRITE, READWRITE = authpb.Permission.READ, authpb.Permission.WRITE, authpb.Permission.READWRITE


class AuthInfo(NamedTuple):
    """Who sends a request: a user name, and the auth revision it was
    identified at (0: nobody, as etcd's empty AuthInfo)."""

    user: str
    revision: int


NOBODY = AuthInfo("", 0)

# --- intervals, compared as etcd's BytesAffineComparable: b"" is above every key


def _bound(key: bytes) -> tuple[int, bytes]:
    return (1, b"") if not key else (0, key)


def _point(key: bytes) -> tuple:
    return _bound(key), _bound(key + b"\0")


def _interval(key: bytes, range_end: bytes) -> tuple:
    """A request's or a permission's keys: one key when range_end is empty,
    [key, +inf) when it is "\\0", else [key, range_end)."""
    if not range_end:
        return _point(key)
    if range_end == b"\0":
        return _bound(key), (1, b"")
    return _bound(key), _bound(range_end)


def _intersects(request: tuple, perm: tuple) -> bool:
    (begin, end), (p_begin, p_end) = request, perm
    if begin < p_begin and end <= p_begin:
        return False
    return begin < p_end


def _covers(perms: list[tuple], request: tuple) -> bool:
    """Whether the permissions (sorted by start) together cover every key of
    the request's interval, without a gap (etcd's IntervalTree.Contains)."""
    min_begin = max_end = None
    for perm in perms:
        if not _intersects(request, perm):
            continue
        if min_begin is None:
            min_begin, max_end = perm
            continue
        if max_end < perm[0]:
            return False
        if perm[1] > max_end:
            max_end = perm[1]
    return min_begin is not None and max_end >= request[1] and min_begin <= request[0]


class _UserPerms:
    """One user's permissions, merged over its roles."""

    __slots__ = ("read", "write", "root")

    def __init__(self, root: bool, read: list, write: list):
        self.root = root
        self.read = sorted(read)
        self.write = sorted(write)

    def allows(self, key: bytes, range_end: bytes, kind: int) -> bool:
        if self.root:
            return True
        perms = self.read if kind == READ else self.write
        if not range_end:  # one key: any permission holding it
            point = _point(key)
            return any(_intersects(point, p) for p in perms)
        return _covers(perms, _interval(key, range_end))


class AuthStore:
    """The replicated auth state; `apply` is the only way to change it."""

    def __init__(self):
        self.enabled = False
        # etcd's store starts at revision 1 (its first commit on creation)
        self.revision = 1
        self.users: dict[str, authpb.User] = {}
        self.roles: dict[str, authpb.Role] = {}
        # Authenticate commands applied so far: a token's number, so a member
        # that does not know a token yet can tell whether it may still come
        self.token_seq = 0
        self._local()

    def _local(self) -> None:
        self.tokens: dict[str, str] = {}  # token -> user name (member-local)
        self._perms: dict[str, _UserPerms] = {}
        self._refresh()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["tokens"], state["_perms"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local()

    # --- checks ----------------------------------------------------------

    def _refresh(self) -> None:
        """Rebuild every user's merged permissions (after any change, as
        etcd's refreshRangePermCache)."""
        perms = {}
        for name, user in self.users.items():
            read, write = [], []
            for role_name in user.roles:
                role = self.roles.get(role_name)
                if role is None:
                    continue
                for p in role.keyPermission:
                    ivl = _interval(p.key, p.range_end)
                    if p.permType in (READ, READWRITE):
                        read.append(ivl)
                    if p.permType in (WRITE, READWRITE):
                        write.append(ivl)
            perms[name] = _UserPerms(ROOT in user.roles, read, write)
        self._perms = perms

    def check(self, info: AuthInfo, key: bytes, range_end: bytes, kind: int) -> None:
        """Raise etcd's error unless `info` may read (kind READ) or write
        (WRITE) [key, range_end); nothing to check while auth is disabled."""
        if not self.enabled:
            return
        if info.revision == 0:
            raise errors.USER_EMPTY
        if info.revision < self.revision:
            raise errors.AUTH_OLD_REVISION
        perms = self._perms.get(info.user)
        if perms is None or not perms.allows(key, range_end, kind):
            raise errors.PERMISSION_DENIED

    def check_admin(self, info: AuthInfo) -> None:
        """Raise etcd's error unless `info` is a user with the root role."""
        if not self.enabled:
            return
        if not info.user:
            raise errors.USER_EMPTY
        user = self.users.get(info.user)
        if user is None:
            raise errors.USER_NOT_FOUND
        if ROOT not in user.roles:
            raise errors.PERMISSION_DENIED

    def is_admin(self, info: AuthInfo) -> bool:
        try:
            self.check_admin(info)
        except errors.EtcdError:
            return False
        return True

    def has_role(self, user: str, role: str) -> bool:
        u = self.users.get(user)
        return u is not None and role in u.roles

    def check_txn(self, info: AuthInfo, t: pb.TxnRequest) -> None:
        """Every compare is a read, every op what it does, nested txns too
        (etcd 3.4 skips nested ones; later versions check them)."""
        for c in t.compare:
            self.check(info, c.key, c.range_end, READ)
        for op in (*t.success, *t.failure):
            kind = op.WhichOneof("request")
            if kind == "request_range":
                self.check(info, op.request_range.key, op.request_range.range_end, READ)
            elif kind == "request_put":
                self.check(info, op.request_put.key, b"", WRITE)
                if op.request_put.prev_kv:
                    self.check(info, op.request_put.key, b"", READ)
            elif kind == "request_delete_range":
                d = op.request_delete_range
                if d.prev_kv:
                    self.check(info, d.key, d.range_end, READ)
                self.check(info, d.key, d.range_end, WRITE)
            elif kind == "request_txn":
                self.check_txn(info, op.request_txn)

    # --- reads (served by the member after its read barrier) -------------

    def user_get(self, name: str) -> pb.AuthUserGetResponse:
        user = self.users.get(name)
        if user is None:
            raise errors.USER_NOT_FOUND
        return pb.AuthUserGetResponse(roles=list(user.roles))

    def user_list(self) -> pb.AuthUserListResponse:
        return pb.AuthUserListResponse(users=sorted(self.users, key=str.encode))

    def role_get(self, name: str) -> pb.AuthRoleGetResponse:
        role = self.roles.get(name)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        return pb.AuthRoleGetResponse(perm=list(role.keyPermission))

    def role_list(self) -> pb.AuthRoleListResponse:
        return pb.AuthRoleListResponse(roles=sorted(self.roles, key=str.encode))

    def password_of(self, name: str) -> bytes:
        """The stored hash for an Authenticate, with etcd's errors."""
        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED
        user = self.users.get(name)
        if user is None:
            raise errors.AUTH_FAILED
        if user.options.no_password:
            raise errors.NO_PASSWORD_USER
        return user.password

    # --- changes (applied commands) --------------------------------------

    def _changed(self) -> None:
        self.revision += 1
        self._refresh()

    def _invalidate(self, user: str) -> None:
        for token in [t for t, u in self.tokens.items() if u == user]:
            del self.tokens[token]

    def enable(self) -> None:
        if self.enabled:
            return
        root = self.users.get(ROOT)
        if root is None:
            raise errors.ROOT_USER_NOT_EXIST
        if ROOT not in root.roles:
            raise errors.ROOT_ROLE_NOT_EXIST
        self.enabled = True

    def disable(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        self.tokens.clear()
        self.revision += 1

    def authenticate(self, name: str, prefix: str, checked_revision: int) -> str | None:
        """Assign a simple token to `name`, whose password the proposer
        checked at `checked_revision` ("" with no prefix: a JWT, which the
        proposer signs); None when the store moved on since (the proposer
        checks again, as etcd's Authenticate retries)."""
        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED
        user = self.users.get(name)
        if user is None or user.options.no_password:
            raise errors.AUTH_FAILED
        if checked_revision != self.revision:
            return None
        if not prefix:  # a JWT, signed by the proposer: nothing kept
            return ""
        self.token_seq += 1
        token = f"{prefix}.{self.token_seq}"
        self.tokens[token] = name
        return token

    def user_add(self, r: pb.AuthUserAddRequest) -> None:
        if not r.name:
            raise errors.USER_EMPTY
        if r.name in self.users:
            raise errors.USER_ALREADY_EXIST
        user = authpb.User(name=r.name.encode(), options=r.options)
        if not r.options.no_password:
            user.password = r.hashedPassword.encode()
        self.users[r.name] = user
        self._changed()

    def user_delete(self, name: str) -> None:
        if self.enabled and name == ROOT:
            raise errors.INVALID_AUTH_MGMT
        if name not in self.users:
            raise errors.USER_NOT_FOUND
        del self.users[name]
        self._changed()
        self._invalidate(name)

    def user_change_password(self, r: pb.AuthUserChangePasswordRequest) -> None:
        user = self.users.get(r.name)
        if user is None:
            raise errors.USER_NOT_FOUND
        user.password = r.hashedPassword.encode()
        self._changed()
        self._invalidate(r.name)

    def user_grant_role(self, name: str, role: str) -> None:
        user = self.users.get(name)
        if user is None:
            raise errors.USER_NOT_FOUND
        if role != ROOT and role not in self.roles:
            raise errors.ROLE_NOT_FOUND
        if role in user.roles:
            return  # etcd ignores it, without a new revision
        roles = sorted([*user.roles, role], key=str.encode)
        del user.roles[:]
        user.roles.extend(roles)
        self._changed()

    def user_revoke_role(self, name: str, role: str) -> None:
        if self.enabled and name == ROOT and role == ROOT:
            raise errors.INVALID_AUTH_MGMT
        user = self.users.get(name)
        if user is None:
            raise errors.USER_NOT_FOUND
        if role not in user.roles:
            raise errors.ROLE_NOT_GRANTED
        user.roles.remove(role)
        self._changed()

    def role_add(self, name: str) -> None:
        if not name:
            raise errors.ROLE_EMPTY
        if name in self.roles:
            raise errors.ROLE_ALREADY_EXIST
        self.roles[name] = authpb.Role(name=name.encode())
        self.revision += 1

    def role_delete(self, name: str) -> None:
        if self.enabled and name == ROOT:
            raise errors.INVALID_AUTH_MGMT
        if name not in self.roles:
            raise errors.ROLE_NOT_FOUND
        del self.roles[name]
        for user in self.users.values():
            if name in user.roles:
                user.roles.remove(name)
        self._changed()

    def role_grant_permission(self, name: str, perm: authpb.Permission) -> None:
        role = self.roles.get(name)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        perms = role.keyPermission
        # as etcd: the first permission at or after the key is updated when
        # it is the same range; otherwise a new one is inserted in key order
        idx = next((i for i, p in enumerate(perms) if p.key >= perm.key), len(perms))
        if idx < len(perms) and perms[idx].key == perm.key and perms[idx].range_end == perm.range_end:
            perms[idx].permType = perm.permType
        else:
            merged = sorted([*perms, authpb.Permission(
                permType=perm.permType, key=perm.key, range_end=perm.range_end)], key=lambda p: p.key)
            del perms[:]
            perms.extend(merged)
        self._changed()

    def role_revoke_permission(self, name: str, key: bytes, range_end: bytes) -> None:
        role = self.roles.get(name)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        kept = [p for p in role.keyPermission if p.key != key or p.range_end != range_end]
        if len(kept) == len(role.keyPermission):
            raise errors.PERMISSION_NOT_GRANTED
        del role.keyPermission[:]
        role.keyPermission.extend(kept)
        self._changed()
