"""What the gRPC gateway serves: etcd 3.4's HTTP bindings of its calls
(`POST /v3/kv/range` -> KV.Range), the member's servicers behind them, and
what a servicer sees of a call that came over HTTP (its context) and how it
ends (a gRPC code and message). The HTTP/1.1 side is `gateway`.
"""

from __future__ import annotations

import grpc
from google.protobuf.message_factory import GetMessageClass

from etcdlite.errors import EtcdError
from etcdlite.pb.etcdserverpb import rpc_pb2
from etcdlite.pb.v3electionpb import v3election_pb2
from etcdlite.pb.v3lockpb import v3lock_pb2
from etcdlite.server.auth import AuthService
from etcdlite.server.cluster import ClusterService
from etcdlite.server.election import ElectionService
from etcdlite.server.kv import KVService
from etcdlite.server.lease import LeaseService
from etcdlite.server.lock import LockService
from etcdlite.server.maintenance import MaintenanceService
from etcdlite.server.rpc import internal_error
from etcdlite.server.watch import WatchService

# etcd 3.4 serves its calls under both; /v3alpha/ went with 3.4
API_PREFIXES = ("/v3/", "/v3beta/")

# (file descriptor, service, method, paths after the version prefix): etcd 3.4's rpc.proto,
# v3lock.proto and v3election.proto google.api.http bindings
_BINDINGS = (
    (rpc_pb2, "KV", "Range", ("kv/range",)),
    (rpc_pb2, "KV", "Put", ("kv/put",)),
    (rpc_pb2, "KV", "DeleteRange", ("kv/deleterange",)),
    (rpc_pb2, "KV", "Txn", ("kv/txn",)),
    (rpc_pb2, "KV", "Compact", ("kv/compaction",)),
    (rpc_pb2, "Watch", "Watch", ("watch",)),
    (rpc_pb2, "Lease", "LeaseGrant", ("lease/grant",)),
    (rpc_pb2, "Lease", "LeaseRevoke", ("lease/revoke", "kv/lease/revoke")),
    (rpc_pb2, "Lease", "LeaseKeepAlive", ("lease/keepalive",)),
    (rpc_pb2, "Lease", "LeaseTimeToLive", ("lease/timetolive", "kv/lease/timetolive")),
    (rpc_pb2, "Lease", "LeaseLeases", ("lease/leases", "kv/lease/leases")),
    (rpc_pb2, "Cluster", "MemberAdd", ("cluster/member/add",)),
    (rpc_pb2, "Cluster", "MemberRemove", ("cluster/member/remove",)),
    (rpc_pb2, "Cluster", "MemberUpdate", ("cluster/member/update",)),
    (rpc_pb2, "Cluster", "MemberList", ("cluster/member/list",)),
    (rpc_pb2, "Cluster", "MemberPromote", ("cluster/member/promote",)),
    (rpc_pb2, "Maintenance", "Alarm", ("maintenance/alarm",)),
    (rpc_pb2, "Maintenance", "Status", ("maintenance/status",)),
    (rpc_pb2, "Maintenance", "Defragment", ("maintenance/defragment",)),
    (rpc_pb2, "Maintenance", "Hash", ("maintenance/hash",)),  # HashKV's binding is the same path: Hash wins
    (rpc_pb2, "Maintenance", "Snapshot", ("maintenance/snapshot",)),
    (rpc_pb2, "Maintenance", "MoveLeader", ("maintenance/transfer-leadership",)),
    (rpc_pb2, "Auth", "AuthEnable", ("auth/enable",)),
    (rpc_pb2, "Auth", "AuthDisable", ("auth/disable",)),
    (rpc_pb2, "Auth", "Authenticate", ("auth/authenticate",)),
    (rpc_pb2, "Auth", "UserAdd", ("auth/user/add",)),
    (rpc_pb2, "Auth", "UserGet", ("auth/user/get",)),
    (rpc_pb2, "Auth", "UserList", ("auth/user/list",)),
    (rpc_pb2, "Auth", "UserDelete", ("auth/user/delete",)),
    (rpc_pb2, "Auth", "UserChangePassword", ("auth/user/changepw",)),
    (rpc_pb2, "Auth", "UserGrantRole", ("auth/user/grant",)),
    (rpc_pb2, "Auth", "UserRevokeRole", ("auth/user/revoke",)),
    (rpc_pb2, "Auth", "RoleAdd", ("auth/role/add",)),
    (rpc_pb2, "Auth", "RoleGet", ("auth/role/get",)),
    (rpc_pb2, "Auth", "RoleList", ("auth/role/list",)),
    (rpc_pb2, "Auth", "RoleDelete", ("auth/role/delete",)),
    (rpc_pb2, "Auth", "RoleGrantPermission", ("auth/role/grant",)),
    (rpc_pb2, "Auth", "RoleRevokePermission", ("auth/role/revoke",)),
    (v3lock_pb2, "Lock", "Lock", ("lock/lock",)),
    (v3lock_pb2, "Lock", "Unlock", ("lock/unlock",)),
    (v3election_pb2, "Election", "Campaign", ("election/campaign",)),
    (v3election_pb2, "Election", "Proclaim", ("election/proclaim",)),
    (v3election_pb2, "Election", "Leader", ("election/leader",)),
    (v3election_pb2, "Election", "Observe", ("election/observe",)),
    (v3election_pb2, "Election", "Resign", ("election/resign",)),
)


def call_path(path: str) -> str | None:
    """The call a gateway path names (`kv/range`), None for a path outside the API."""
    for prefix in API_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):]
    return None


class Route:
    """One gateway call: the servicer's method, its message classes, its kind."""

    __slots__ = ("handler", "path", "request_class", "response_class", "client_stream", "server_stream")

    def __init__(self, handler, method) -> None:
        self.handler = handler
        self.path = f"/{method.containing_service.full_name}/{method.name}"  # the gRPC port's
        self.request_class = GetMessageClass(method.input_type)
        self.response_class = GetMessageClass(method.output_type)
        self.client_stream = method.client_streaming
        self.server_stream = method.server_streaming


def routes(member) -> dict[str, Route]:
    """Path (without its version prefix) -> Route, on servicers of `member`
    made for the gateway (the same classes as the gRPC port's; Watch as the
    generator that the pulling of the answers paces)."""
    services = {"KV": KVService(member), "Watch": WatchService(member), "Lease": LeaseService(member),
                "Cluster": ClusterService(member), "Maintenance": MaintenanceService(member),
                "Auth": AuthService(member, member.auth), "Lock": LockService(member),
                "Election": ElectionService(member)}
    table = {}
    for module, service, name, paths in _BINDINGS:
        method = module.DESCRIPTOR.services_by_name[service].methods_by_name[name]
        route = Route(getattr(services[service], name), method)
        for path in paths:
            table[path] = route
    return table


class GatewayContext:
    """What a servicer sees of a gateway call: grpc.aio's ServicerContext's
    methods that etcdlite's handlers use."""

    __slots__ = ("_metadata", "_peer", "_code", "_details", "_done")

    def __init__(self, metadata: tuple, peer: str) -> None:
        self._metadata = metadata
        self._peer = peer
        self._code = None
        self._details = ""
        self._done = False

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()):
        self._code, self._details = code, details
        raise grpc.aio.AbortError()

    def set_code(self, code) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self):
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata) -> None:
        pass

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict:
        return {}  # no client certificate reaches a servicer through the gateway (as etcd's)

    def time_remaining(self):
        return None

    def cancelled(self) -> bool:
        return self._done

    def done(self) -> bool:
        return self._done


class CallError(Exception):
    """A call's gRPC error: (code, message)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def too_large(size: int, limit: int) -> CallError:
    # the gRPC server's refusal of a message over its receive limit, as etcd's gateway relays it
    return CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                     f"grpc: received message larger than max ({size} vs. {limit})")


def outcome(context: GatewayContext, exc: BaseException | None, name: str) -> CallError:
    """The gRPC error a handler ended with (aborted, an etcd error, a bug)."""
    if isinstance(exc, EtcdError):
        return CallError(exc.code, exc.message)
    if context._code is not None and context._code != grpc.StatusCode.OK:
        return CallError(context._code, context._details)
    return CallError(*internal_error(name, exc))
