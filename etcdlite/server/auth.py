"""Who sends a request, and what they may do: the member's side of etcd's
auth (the replicated side is etcdlite.auth_store and etcdlite.auth_apply).

A client names itself with a token in the gRPC metadata `token` (what etcd
clients send after Authenticate; `authorization` too, as etcd's gateway
does): a simple token, or with `--auth-token jwt,...` a JWT
(etcdlite.jwt_tokens: checked by its signature, no state kept), or, with --client-cert-auth and no token, by the common name of its
verified TLS certificate. As etcd 3.4:
  * reads (Range, Watch creation, the Auth service's Get and List calls) are
    checked here, against this member's applied state after the read's
    consistency step;
  * writes carry their sender into Raft and are checked where they are
    applied, by every member alike (etcdlite.auth_apply);
  * a token that this member does not know is refused with "invalid auth
    token", even while auth is disabled; one it may not know yet (assigned
    by a later Authenticate than it applied) waits for a read barrier first,
    as etcd's index waiter;
  * simple tokens live `--auth-token-ttl` seconds (300) after their last
    use on this member (`TokenClock`); a JWT until its `exp`;
  * a read whose token names another auth revision than the store's is
    refused as "revision of auth store is old", even with auth disabled
    (etcd's check after a serialized read; only a JWT can carry one).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from types import MethodType

import grpc

from etcdlite import errors
from etcdlite.auth_apply import AuthOp
from etcdlite.auth_store import NOBODY, READ, AuthInfo
from etcdlite.jwt_tokens import JWTTokens
from etcdlite.passwords import check_password, hash_password
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.server.rpc import unary
from grpclite import context_of, metadata_of

log = logging.getLogger("etcdlite.auth")

TOKEN_KEYS = frozenset(("token", "authorization"))
# etcd's simple token prefix: 16 random letters
_LETTERS = string.ascii_letters
_PREFIX_LEN = 16
# Authenticate retries when users or roles changed while the password was checked
_AUTHENTICATE_ATTEMPTS = 5
_SWEEP_SECONDS = 1.0

# Maintenance's admin calls answer etcd 3.4's untranslated errors (code Unknown, "auth: ...")
_MAINTENANCE_TEXTS = {
    errors.USER_EMPTY: "auth: user name is empty",
    errors.USER_NOT_FOUND: "auth: user not found",
    errors.PERMISSION_DENIED: "auth: permission denied",
    errors.INVALID_AUTH_TOKEN: "auth: invalid auth token",
}


def _context(call):
    """A handler's context (grpclite's or grpc.aio's), also for grpclite's
    callback handlers, which are given their call's `reply` instead."""
    return context_of(call) if type(call) is MethodType else call


def _certificate_cn(call) -> str | None:
    """The common name of the client's verified TLS certificate, if any."""
    names = _context(call).auth_context().get("x509_common_name") or []
    return names[0].decode() if names else None


def _token_in(metadata) -> str | None:
    for key, value in metadata:
        if key in TOKEN_KEYS:
            return value
    return None


class TokenClock:
    """When this member's simple tokens expire: `ttl` seconds after their
    last use here, or after this member first saw them (etcd's TTL keeper;
    a member-local clock, so it stays out of the replicated state)."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self.deadlines: dict[str, float] = {}

    def use(self, token: str, now: float) -> bool:
        """Whether `token` is still alive; using it restarts its TTL."""
        deadline = self.deadlines.get(token)
        if deadline is not None and deadline <= now:
            return False
        self.deadlines[token] = now + self.ttl
        return True

    def sweep(self, tokens: dict[str, str], now: float) -> None:
        """Drop expired tokens from `tokens` (the auth store's), start the
        clock of new ones, forget those the store dropped."""
        for token in list(tokens):
            deadline = self.deadlines.get(token)
            if deadline is None:
                self.deadlines[token] = now + self.ttl
            elif deadline <= now:
                del tokens[token]
        for token in [t for t in self.deadlines if t not in tokens]:
            del self.deadlines[token]


def _lookup(machine, args) -> AuthInfo | None | bool:
    """The sender a token names (with the auth revision now), None if this
    member does not know it, False if it may know it after applying more."""
    token, clock, now = args
    auth = machine.auth
    user = auth.tokens.get(token)
    if user is not None:
        if clock.use(token, now):
            return AuthInfo(user, auth.revision)
        del auth.tokens[token]
        return None
    _, _, seq = token.rpartition(".")
    if seq.isdigit() and int(seq) > auth.token_seq:
        return False
    return None


def _check_read(machine, args) -> None:
    info, key, range_end = args
    auth = machine.auth
    auth.check(info, key, range_end, READ)
    if info.revision and info.revision != auth.revision:
        raise errors.AUTH_OLD_REVISION


def _revision(machine) -> int:
    return machine.auth.revision


class AuthGate:
    """The member's checks. `needed(call)` is the cheap test the hot paths
    make first: auth enabled, or a token sent (to be refused if unknown)."""

    def __init__(self, member, token_ttl: float, client_cert_auth: bool, jwt: JWTTokens | None = None):
        self.m = member
        self.clock = TokenClock(token_ttl)
        self.jwt = jwt  # None: simple tokens
        self.client_cert_auth = client_cert_auth
        self._state = None

    def bind(self, state) -> None:
        """`state.machine` is the member's state machine (RaftNode.state):
        `needed` reads its auth flag without the raft lock (it is set by
        applies, which run in the same event loop)."""
        self._state = state

    def needed(self, call) -> bool:
        if self._state.machine.auth.enabled:
            return True
        metadata = _context(call).invocation_metadata()
        return bool(metadata) and _token_in(metadata) is not None

    def needed_by_reply(self, reply) -> bool:
        """`needed`, for grpclite's callback handlers (the KV writes: the
        hottest path, kept to a few attribute reads while auth is off;
        measured: benchmarks/why.md)."""
        if self._state.machine.auth.enabled:
            return True
        metadata = metadata_of(reply)
        return bool(metadata) and _token_in(metadata) is not None

    async def who(self, call) -> AuthInfo | None:
        """The sender of a call (None: nobody named); raises etcd's invalid
        auth token for a token this member does not know."""
        token = _token_in(_context(call).invocation_metadata() or ())
        if token is None:
            if self.client_cert_auth:
                cn = _certificate_cn(call)
                if cn:
                    return AuthInfo(cn, self.m.read(_revision))
            return None
        if self.jwt is not None:
            claims = self.jwt.info(token)
            if claims is None:
                raise errors.INVALID_AUTH_TOKEN
            return AuthInfo(claims.username, claims.revision)
        m = self.m
        info = m.read(_lookup, (token, self.clock, time.monotonic()))
        if info is False:  # assigned by an Authenticate not applied here yet
            await m.read_barrier()
            info = m.read(_lookup, (token, self.clock, time.monotonic()))
        if not info:
            raise errors.INVALID_AUTH_TOKEN
        return info

    async def sender(self, call) -> tuple:
        """What a proposed command carries after its request: (user, auth
        revision), or nothing when auth is off and no token came."""
        if not self.needed(call):
            return ()
        info = await self.who(call) or NOBODY
        return (info.user, info.revision)

    async def check_read(self, call, key: bytes, range_end: bytes) -> None:
        """Raise etcd's error unless the sender may read [key, range_end)."""
        if not self.needed(call):
            return
        info = await self.who(call) or NOBODY
        self.m.read(_check_read, (info, key, range_end))

    async def check_admin(self, call, *, maintenance: bool = True) -> None:
        """The root role: for Maintenance's Defragment, Snapshot, Hash and
        HashKV, refused with etcd 3.4's untranslated errors; for the Cluster
        service's changes (`maintenance=False`), with its gRPC errors."""
        if not self.needed(call):
            return
        try:
            info = await self.who(call) or NOBODY
            self.m.read(lambda machine: machine.auth.check_admin(info))
        except errors.EtcdError as err:
            if not maintenance:
                raise
            text = _MAINTENANCE_TEXTS.get(err)
            if text is None:
                raise
            raise errors.EtcdError(grpc.StatusCode.UNKNOWN, text) from None

    async def run(self) -> None:
        """Expire tokens (etcd's TTL keeper ticks every second too)."""
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            now = time.monotonic()
            self.m.read(lambda machine: self.clock.sweep(machine.auth.tokens, now))


def _token_prefix() -> str:
    return "".join(secrets.choice(_LETTERS) for _ in range(_PREFIX_LEN))


class AuthService(rpc_pb2_grpc.AuthServicer):
    """etcd's Auth service. Changes go through Raft with their sender (the
    root role is checked where they are applied); Get and List are served
    here after a read barrier, checked here."""

    def __init__(self, member, gate: AuthGate):
        self.m = member
        self.gate = gate

    async def _change(self, op: AuthOp, request, context):
        m = self.m
        resp = await m.propose(op, request, tail=await self.gate.sender(context))
        m.header(resp.header)
        return resp

    @unary
    async def AuthEnable(self, request, context):
        return await self._change(AuthOp.AUTH_ENABLE, request, context)

    @unary
    async def AuthDisable(self, request, context):
        return await self._change(AuthOp.AUTH_DISABLE, request, context)

    async def _hash(self, password: str, context) -> str:
        """The password's hash, for a UserAdd or UserChangePassword; who may
        not make them is refused first (checked again where applied), so
        that nobody else makes the member spend a hash's CPU."""
        if self.gate.needed(context):
            info = await self.gate.who(context) or NOBODY
            self.m.read(lambda machine: machine.auth.check_admin(info))
        return await asyncio.get_running_loop().run_in_executor(None, hash_password, password)

    @unary
    async def UserAdd(self, request, context):
        hashed = ""
        if not request.options.no_password:
            hashed = await self._hash(request.password, context)
        command = pb.AuthUserAddRequest(name=request.name, options=request.options, hashedPassword=hashed)
        return await self._change(AuthOp.USER_ADD, command, context)

    @unary
    async def UserChangePassword(self, request, context):
        hashed = await self._hash(request.password, context)
        command = pb.AuthUserChangePasswordRequest(name=request.name, hashedPassword=hashed)
        return await self._change(AuthOp.USER_CHANGE_PASSWORD, command, context)

    @unary
    async def UserDelete(self, request, context):
        return await self._change(AuthOp.USER_DELETE, request, context)

    @unary
    async def UserGrantRole(self, request, context):
        return await self._change(AuthOp.USER_GRANT_ROLE, request, context)

    @unary
    async def UserRevokeRole(self, request, context):
        return await self._change(AuthOp.USER_REVOKE_ROLE, request, context)

    @unary
    async def RoleAdd(self, request, context):
        return await self._change(AuthOp.ROLE_ADD, request, context)

    @unary
    async def RoleDelete(self, request, context):
        return await self._change(AuthOp.ROLE_DELETE, request, context)

    @unary
    async def RoleGrantPermission(self, request, context):
        return await self._change(AuthOp.ROLE_GRANT_PERMISSION, request, context)

    @unary
    async def RoleRevokePermission(self, request, context):
        return await self._change(AuthOp.ROLE_REVOKE_PERMISSION, request, context)

    # --- reads ------------------------------------------------------------

    async def _read(self, context, query):
        """query(auth store, sender) after a read barrier, with its header."""
        m = self.m
        await m.read_barrier()
        info = await self.gate.who(context) if self.gate.needed(context) else None
        resp, revision = m.read(lambda machine: (query(machine.auth, info or NOBODY), machine.kv.current_revision))
        m.header(resp.header, revision)
        return resp

    @unary
    async def UserGet(self, request, context):
        def get(auth, info):
            # as etcd: the root role, or one's own user
            if request.name != info.user:
                auth.check_admin(info)
            return auth.user_get(request.name)

        return await self._read(context, get)

    @unary
    async def UserList(self, request, context):
        def get(auth, info):
            auth.check_admin(info)
            return auth.user_list()

        return await self._read(context, get)

    @unary
    async def RoleGet(self, request, context):
        def get(auth, info):
            # as etcd: the root role, or a role one has
            if not auth.has_role(info.user, request.role):
                auth.check_admin(info)
            return auth.role_get(request.role)

        return await self._read(context, get)

    @unary
    async def RoleList(self, request, context):
        def get(auth, info):
            auth.check_admin(info)
            return auth.role_list()

        return await self._read(context, get)

    # --- Authenticate -----------------------------------------------------

    @unary
    async def Authenticate(self, request, context):
        """As etcd: the password is checked here (slow by design, in a
        worker thread), then a token is assigned through Raft so that every
        member knows it; the command holds the user's name and the token's
        random prefix, never the password."""
        m = self.m
        await m.read_barrier()
        if self.gate.needed(context):
            await self.gate.who(context)  # an unknown token is refused, as etcd does
        loop = asyncio.get_running_loop()
        name = pb.AuthenticateRequest(name=request.name)
        for _ in range(_AUTHENTICATE_ATTEMPTS):
            stored, revision = m.read(lambda machine: (machine.auth.password_of(request.name),
                                                       machine.auth.revision))
            if not await loop.run_in_executor(None, check_password, request.password, stored):
                log.warning("authentication of user %r failed", request.name)
                raise errors.AUTH_FAILED
            # a JWT is signed here once the command is applied (no token is kept)
            prefix = _token_prefix() if self.gate.jwt is None else ""
            try:
                resp = await m.propose(AuthOp.AUTHENTICATE, name, tail=(prefix, revision))
            except errors.EtcdError as err:
                if err != errors.AUTH_OLD_REVISION:
                    raise
                continue  # users or roles changed meanwhile: check again
            if self.gate.jwt is not None:
                resp.token = self.gate.jwt.assign(request.name, revision)
            m.header(resp.header)
            return resp
        raise errors.AUTH_OLD_REVISION
