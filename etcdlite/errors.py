"""etcd's client-facing errors: the gRPC status code and the exact text.

Clients (etcdctl, clientv3, jetcd, python-etcd3, ...) match on these texts,
so they are kept byte-for-byte as etcd sends them.
"""

from __future__ import annotations

import grpc


class EtcdError(Exception):
    """An error that reaches the client as a gRPC status with etcd's text."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):
        return (EtcdError, (self.code, self.message))

    def __eq__(self, other):
        return isinstance(other, EtcdError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self):
        return hash((self.code, self.message))

    def __repr__(self):
        return f"EtcdError({self.code.name}, {self.message!r})"


_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

EMPTY_KEY = EtcdError(_INVALID, "etcdserver: key is not provided")
KEY_NOT_FOUND = EtcdError(_INVALID, "etcdserver: key not found")
VALUE_PROVIDED = EtcdError(_INVALID, "etcdserver: value is provided")
LEASE_PROVIDED = EtcdError(_INVALID, "etcdserver: lease is provided")
TOO_MANY_OPS = EtcdError(_INVALID, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = EtcdError(_INVALID, "etcdserver: duplicate key given in txn request")
INVALID_SORT_OPTION = EtcdError(_INVALID, "etcdserver: invalid sort option")
REQUEST_TOO_LARGE = EtcdError(_INVALID, "etcdserver: request is too large")
COMPACTED = EtcdError(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = EtcdError(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
NO_SPACE = EtcdError(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
CORRUPT = EtcdError(grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")
LEASE_NOT_FOUND = EtcdError(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXIST = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = EtcdError(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
MEMBER_NOT_FOUND = EtcdError(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
PEER_URL_EXISTS = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
MEMBER_BAD_URLS = EtcdError(_INVALID, "etcdserver: given member URLs are invalid")
NOT_CAPABLE = EtcdError(_UNAVAILABLE, "etcdserver: not capable")
NO_LEADER = EtcdError(_UNAVAILABLE, "etcdserver: no leader")
NOT_LEADER = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
BAD_LEADER_TRANSFEREE = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
LEADER_TRANSFER_TIMEOUT = EtcdError(_UNAVAILABLE, "etcdserver: request timed out, leader transfer took too long")
LEADER_CHANGED = EtcdError(_UNAVAILABLE, "etcdserver: leader changed")
TIMEOUT = EtcdError(_UNAVAILABLE, "etcdserver: request timed out")
STOPPED = EtcdError(_UNAVAILABLE, "etcdserver: server stopped")
MEMBER_NOT_LEARNER = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = EtcdError(grpc.StatusCode.FAILED_PRECONDITION,
                              "etcdserver: can only promote a learner member which is in sync with leader")
TOO_MANY_LEARNERS = EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: too many learner members in cluster")
NOT_SUPPORTED_FOR_LEARNER = EtcdError(_UNAVAILABLE, "etcdserver: rpc not supported for learner")
RAFT_ADDRESS_CHANGE_UNSUPPORTED = EtcdError(
    grpc.StatusCode.UNIMPLEMENTED,
    "etcdlite: a member's first peer URL is its Raft address, which cannot change: remove the member and add it again")

# auth (etcd's rpctypes: the texts and codes etcd 3.4 sends)
_FAILED = grpc.StatusCode.FAILED_PRECONDITION
ROOT_USER_NOT_EXIST = EtcdError(_FAILED, "etcdserver: root user does not exist")
ROOT_ROLE_NOT_EXIST = EtcdError(_FAILED, "etcdserver: root user does not have root role")
USER_ALREADY_EXIST = EtcdError(_FAILED, "etcdserver: user name already exists")
USER_EMPTY = EtcdError(_INVALID, "etcdserver: user name is empty")
USER_NOT_FOUND = EtcdError(_FAILED, "etcdserver: user name not found")
ROLE_ALREADY_EXIST = EtcdError(_FAILED, "etcdserver: role name already exists")
ROLE_NOT_FOUND = EtcdError(_FAILED, "etcdserver: role name not found")
ROLE_EMPTY = EtcdError(_INVALID, "etcdserver: role name is empty")
AUTH_FAILED = EtcdError(_INVALID, "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_DENIED = EtcdError(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
ROLE_NOT_GRANTED = EtcdError(_FAILED, "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = EtcdError(_FAILED, "etcdserver: permission is not granted to the role")
AUTH_NOT_ENABLED = EtcdError(_FAILED, "etcdserver: authentication is not enabled")
INVALID_AUTH_TOKEN = EtcdError(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
INVALID_AUTH_MGMT = EtcdError(_INVALID, "etcdserver: invalid auth management")
AUTH_OLD_REVISION = EtcdError(_INVALID, "etcdserver: revision of auth store is old")
# etcd 3.4 has no rpctypes error for it: grpc-go sends its Go text with code Unknown
NO_PASSWORD_USER = EtcdError(grpc.StatusCode.UNKNOWN,
                             "auth: authentication failed, password was given for no password user")
