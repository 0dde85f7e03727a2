"""Applying auth: the Auth service's commands, and the permission checks of
KV and lease writes, as every member runs them (deterministic: the proposer
did what needs a clock or randomness, hashing passwords and drawing token
prefixes, before proposing).

Commands (see etcdlite.apply):
  (op, request)                          an anonymous request, or one sent
                                         while auth was disabled
  (op, request, user, auth revision)     a request with its sender, as the
                                         proposing member identified it
  (AuthOp.AUTHENTICATE, request, token prefix, auth revision the password
                                         was checked at)
As etcd (apply_auth.go), every Auth command but Authenticate needs the root
role once auth is enabled; a KV write needs the permissions of its keys.
"""

from __future__ import annotations

from enum import IntEnum

from etcdlite import errors
from etcdlite.auth_store import NOBODY, READ, WRITE, AuthInfo
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb


class AuthOp(IntEnum):
    """Command numbers after etcdlite.apply.Op's."""

    AUTH_ENABLE = 14
    AUTH_DISABLE = 15
    AUTHENTICATE = 16
    USER_ADD = 17
    USER_DELETE = 18
    USER_CHANGE_PASSWORD = 19
    USER_GRANT_ROLE = 20
    USER_REVOKE_ROLE = 21
    ROLE_ADD = 22
    ROLE_DELETE = 23
    ROLE_GRANT_PERMISSION = 24
    ROLE_REVOKE_PERMISSION = 25


FIRST_AUTH_OP = int(AuthOp.AUTH_ENABLE)
LAST_AUTH_OP = int(AuthOp.ROLE_REVOKE_PERMISSION)

# op -> (request type, what it does to the store, its response type)
_ADMIN = {
    AuthOp.AUTH_ENABLE: (pb.AuthEnableRequest, lambda a, r: a.enable(), pb.AuthEnableResponse),
    AuthOp.AUTH_DISABLE: (pb.AuthDisableRequest, lambda a, r: a.disable(), pb.AuthDisableResponse),
    AuthOp.USER_ADD: (pb.AuthUserAddRequest, lambda a, r: a.user_add(r), pb.AuthUserAddResponse),
    AuthOp.USER_DELETE: (pb.AuthUserDeleteRequest, lambda a, r: a.user_delete(r.name), pb.AuthUserDeleteResponse),
    AuthOp.USER_CHANGE_PASSWORD: (pb.AuthUserChangePasswordRequest, lambda a, r: a.user_change_password(r),
                                  pb.AuthUserChangePasswordResponse),
    AuthOp.USER_GRANT_ROLE: (pb.AuthUserGrantRoleRequest, lambda a, r: a.user_grant_role(r.user, r.role),
                             pb.AuthUserGrantRoleResponse),
    AuthOp.USER_REVOKE_ROLE: (pb.AuthUserRevokeRoleRequest, lambda a, r: a.user_revoke_role(r.name, r.role),
                              pb.AuthUserRevokeRoleResponse),
    AuthOp.ROLE_ADD: (pb.AuthRoleAddRequest, lambda a, r: a.role_add(r.name), pb.AuthRoleAddResponse),
    AuthOp.ROLE_DELETE: (pb.AuthRoleDeleteRequest, lambda a, r: a.role_delete(r.role), pb.AuthRoleDeleteResponse),
    AuthOp.ROLE_GRANT_PERMISSION: (pb.AuthRoleGrantPermissionRequest,
                                   lambda a, r: a.role_grant_permission(r.name, r.perm),
                                   pb.AuthRoleGrantPermissionResponse),
    AuthOp.ROLE_REVOKE_PERMISSION: (pb.AuthRoleRevokePermissionRequest,
                                    lambda a, r: a.role_revoke_permission(r.role, r.key, r.range_end),
                                    pb.AuthRoleRevokePermissionResponse),
}


def sender(command) -> AuthInfo:
    """Who proposed a (non-Authenticate) command."""
    return AuthInfo(command[2], command[3]) if len(command) == 4 else NOBODY


def apply_auth(machine, command):
    """An Auth command: (its response or EtcdError, no events)."""
    op, data = command[0], command[1]
    auth = machine.auth
    try:
        if op == AuthOp.AUTHENTICATE:
            name = pb.AuthenticateRequest.FromString(data).name
            token = auth.authenticate(name, command[2], command[3])
            if token is None:  # the store changed since the password was checked
                return errors.AUTH_OLD_REVISION, []
            resp = pb.AuthenticateResponse(token=token)
        else:
            request_type, change, response_type = _ADMIN[op]
            auth.check_admin(sender(command))
            change(auth, request_type.FromString(data))
            resp = response_type()
    except errors.EtcdError as err:
        return err, []
    resp.header.revision = machine.kv.current_revision
    return resp, []


def check_write(machine, op: int, data: bytes, info: AuthInfo):
    """Raise etcd's error unless `info` may do the KV or lease write; returns
    the parsed request (a Put's, for the apply that follows) or None."""
    from etcdlite.apply import Op  # etcdlite.apply imports this module

    auth = machine.auth
    if op == Op.PUT:
        p = pb.PutRequest.FromString(data)
        auth.check(info, p.key, b"", WRITE)
        _check_lease_keys(machine, p.lease, info)
        if p.prev_kv:
            auth.check(info, p.key, b"", READ)
        return p
    if op == Op.DELETE_RANGE:
        d = pb.DeleteRangeRequest.FromString(data)
        auth.check(info, d.key, d.range_end, WRITE)
        if d.prev_kv:
            auth.check(info, d.key, d.range_end, READ)
    elif op == Op.TXN:
        auth.check_txn(info, pb.TxnRequest.FromString(data))
    elif op == Op.LEASE_REVOKE:
        _check_lease_keys(machine, pb.LeaseRevokeRequest.FromString(data).ID, info)
    return None


def _check_lease_keys(machine, lease_id: int, info: AuthInfo) -> None:
    """As etcd: a lease may be revoked, or given to a new key, only by who may
    write every key already attached to it."""
    lease = machine.leases.get(lease_id) if lease_id else None
    if lease is not None:
        for key in sorted(lease.keys):
            machine.auth.check(info, key, b"", WRITE)
