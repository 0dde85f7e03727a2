"""Typed objects in any etcd v3 store, the way kube-apiserver's etcd3 storage
keeps them.

- An object lives at ``resource.key(namespace, name)``. Its value is a short
  header (``MAGIC`` + kind) and the message's protobuf bytes with
  metadata.resourceVersion cleared: the resourceVersion is the key's etcd
  mod_revision, filled in when the value is read.
- Values of encrypted resources (Secrets) pass through a Transformer with the
  etcd key as authenticated context (see apiserver/encryption.py).
- Every write is a compare-and-swap on mod_revision: create is
  Txn(mod_revision == 0 -> put), update and delete are
  Txn(mod_revision == seen -> ...), so two writers never both win.
- Reads are linearizable (etcd's default). A list's pages all read one
  revision, carried in the continue token.
- Every failure leaves as an ApiError with a Kubernetes reason; etcd's gRPC
  errors are translated by ``etcd_error``.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
from google.protobuf.message import DecodeError

from apiserver import errors
from apiserver.encryption import ENCRYPTED_PREFIX, IdentityTransformer, TransformError, Transformer
from apiserver.etcd3 import Etcd, pb, prefix_range_end
from apiserver.leases import LeaseManager
from apiserver.resources import REGISTRY_PREFIX, Resource

# First bytes of every value this storage writes (before encryption); the
# kind follows, then a NUL, then the protobuf message.
MAGIC = b"kpb1\x00"

DEFAULT_REQUEST_TIMEOUT = 10.0
# a filtered list reads pages of growing size, up to this many keys a Range
MAX_PAGE_SIZE = 10_000
CONTINUE_VERSION = "meta.k8s.io/v1"
CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter, or use the continue token "
    "in this response to retrieve the remainder of the results.")

_COMPACTED = "required revision has been compacted"
_FUTURE = "required revision is a future revision"

_MOD = pb.Compare.CompareTarget.MOD
_EQUAL = pb.Compare.CompareResult.EQUAL


@dataclass
class Claims:
    """Keys a write takes or frees in the same etcd Txn as the object itself:
    a Service's IPAddress objects and NodePort records, so that a Service and
    its allocations are written together or not at all.

    ``take``: key -> value, each key must not exist yet (Txn compares
    mod_revision == 0). ``free``: key -> the mod_revision it was read at; it
    is deleted only if still unchanged (a nested Txn, so a claim someone else
    has meanwhile taken over is left alone and the write still succeeds)."""
    take: dict[bytes, bytes] = field(default_factory=dict)
    free: dict[bytes, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.take or self.free)


class ClaimTaken(Exception):
    """A write's object was still as read but some of its ``take`` keys
    existed: ``keys`` are those (nothing was written)."""

    def __init__(self, keys: set[bytes]) -> None:
        super().__init__(", ".join(sorted(k.decode("utf-8", "replace") for k in keys)))
        self.keys = keys


def _claim_ops(claims: Claims | None) -> tuple[list, list, list]:
    """(compares, success ops, failure reads) that ``claims`` add to a Txn."""
    if not claims:
        return [], [], []
    compares = [pb.Compare(key=k, target=_MOD, result=_EQUAL, mod_revision=0) for k in claims.take]
    ops = [pb.RequestOp(request_put=pb.PutRequest(key=k, value=v)) for k, v in claims.take.items()]
    for key, revision in claims.free.items():
        ops.append(pb.RequestOp(request_txn=pb.TxnRequest(
            compare=[pb.Compare(key=key, target=_MOD, result=_EQUAL, mod_revision=revision)],
            success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))])))
    reads = [pb.RequestOp(request_range=pb.RangeRequest(key=k, keys_only=True)) for k in claims.take]
    return compares, ops, reads


def _taken_keys(resp: pb.TxnResponse, claims: Claims | None) -> set[bytes]:
    """The ``take`` keys a failed Txn found existing (its reads after the first)."""
    if not claims:
        return set()
    return {k for k, r in zip(claims.take, resp.responses[1:]) if r.response_range.kvs}


@dataclass
class ListResult:
    """One page of a list. ``revision`` is the etcd revision every page of
    this list reads (the list's resourceVersion). ``continue_token`` is empty
    on the last page. ``remaining_item_count`` counts the objects after this
    page, known only for an unfiltered list with more pages (else None)."""
    items: list = field(default_factory=list)
    revision: int = 0
    continue_token: str = ""
    remaining_item_count: int | None = None


def etcd_error(err: grpc.RpcError) -> errors.ApiError:
    """The ApiError for a failed etcd call: never a traceback to the client."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else "") or str(code)
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.unavailable(f"etcd is unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.timeout(f"Timeout: the etcd request did not complete in time: {details}")
    if "too many requests" in details:
        return errors.ApiError("TooManyRequests", f"etcd is overloaded: {details}")
    if "request is too large" in details or code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.too_large(f"Request entity too large: {details}")
    name = code.name if code is not None else "UNKNOWN"
    return errors.internal(f"etcd request failed: {name}: {details}")


class Storage:
    """CRUD and list of typed messages of any Resource in one etcd cluster.

    Returned messages are fresh copies with metadata.resource_version set;
    messages passed in are never modified."""

    def __init__(self, etcd: Etcd, *, transformer: Transformer | None = None,
                 encrypted_resources: frozenset[str] = frozenset({"secrets"}),
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 ttls: dict[str, int] | None = None) -> None:
        """``ttls``: seconds that objects of a resource live after their last
        write (kube-apiserver's TTLFunc: Events, ``--event-ttl``), by etcd leases."""
        self.etcd = etcd
        self.transformer = transformer if transformer is not None else IdentityTransformer()
        self.encrypted_resources = frozenset(encrypted_resources)
        self.request_timeout = request_timeout
        self.ttls = dict(ttls or {})
        self.leases = LeaseManager(self._grant)

    # ---- encoding ----

    def encode(self, resource: Resource, key: bytes, msg) -> bytes:
        """The value stored for ``msg`` at ``key``."""
        if not isinstance(msg, resource.message):
            raise errors.internal(
                f"storage: a {type(msg).__name__} cannot be stored as {resource.name}")
        data = _header(resource) + _without_resource_version(msg).SerializeToString(deterministic=True)
        if resource.name in self.encrypted_resources:
            data = self.transformer.encrypt(data, key)
        return data

    def decode(self, resource: Resource, key: bytes, value: bytes, mod_revision: int):
        """The typed message stored as ``value`` at ``key``, with
        metadata.resource_version = str(mod_revision). A value that is not
        ours, or does not decrypt, is an InternalError naming the key."""
        shown = key.decode("utf-8", "replace")
        if value.startswith(ENCRYPTED_PREFIX):
            # also for a resource no longer in encrypted_resources: its old values stay readable
            try:
                value = self.transformer.decrypt(value, key)
            except TransformError as e:
                raise errors.internal(f"cannot decrypt the value of {shown}: {e}") from None
        header = _header(resource)
        if not value.startswith(header):
            if value.startswith(MAGIC):
                found = value[len(MAGIC):].split(b"\x00", 1)[0].decode("utf-8", "replace")
                raise errors.internal(f"cannot decode {shown}: it holds a {found}, not a {resource.kind}")
            raise errors.internal(f"cannot decode {shown}: the value was not written by the apiserver")
        msg = resource.message()
        try:
            msg.ParseFromString(value[len(header):])
        except DecodeError as e:
            raise errors.internal(f"cannot decode {shown}: corrupt {resource.kind}: {e}") from None
        msg.metadata.resource_version = str(mod_revision)
        return msg

    def _decode_kv(self, resource: Resource, kv, revision: int | None = None):
        return self.decode(resource, kv.key, kv.value, kv.mod_revision if revision is None else revision)

    # ---- etcd calls ----

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.request_timeout)
        except grpc.RpcError as e:
            raise etcd_error(e) from None

    async def _grant(self, ttl: int) -> int:
        return (await self._call(self.etcd.lease.LeaseGrant, pb.LeaseGrantRequest(TTL=ttl))).ID

    async def _put(self, resource: Resource, key: bytes, msg) -> pb.RequestOp:
        """The Put of ``msg`` at ``key``, on a lease when the resource expires."""
        ttl = self.ttls.get(resource.name)
        lease = await self.leases.lease(ttl) if ttl else 0
        return pb.RequestOp(request_put=pb.PutRequest(key=key, value=self.encode(resource, key, msg), lease=lease))

    async def _get_kv(self, key: bytes):
        resp = await self._call(self.etcd.kv.Range, pb.RangeRequest(key=key))
        return resp.kvs[0] if resp.kvs else None

    async def _txn_if_unmodified(self, key: bytes, mod_revision: int, op: pb.RequestOp,
                                 claims: Claims | None = None) -> pb.TxnResponse:
        """Txn(mod_revision(key) == mod_revision [and claims free] -> op [and
        claims], else read key [and the claimed keys])."""
        compares, ops, reads = _claim_ops(claims)
        request = pb.TxnRequest(
            compare=[pb.Compare(key=key, target=_MOD, result=_EQUAL, mod_revision=mod_revision), *compares],
            success=[op, *ops],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key)), *reads])
        return await self._call(self.etcd.kv.Txn, request)

    @staticmethod
    def _current_after_miss(resp: pb.TxnResponse):
        """The key's kv read by a failed _txn_if_unmodified (None: it is gone)."""
        kvs = resp.responses[0].response_range.kvs
        return kvs[0] if kvs else None

    async def read_keys(self, keys: list[bytes]) -> dict[bytes, Any]:
        """key -> kv of those of ``keys`` that exist, read at one revision (one Txn)."""
        if not keys:
            return {}
        resp = await self._call(self.etcd.kv.Txn, pb.TxnRequest(
            success=[pb.RequestOp(request_range=pb.RangeRequest(key=k)) for k in keys]))
        return {r.response_range.kvs[0].key: r.response_range.kvs[0]
                for r in resp.responses if r.response_range.kvs}

    async def read_prefixes(self, prefixes: list[bytes], *, keys_only: bool = False) -> tuple[list[list], int]:
        """Every kv under each prefix, all read at one revision (one Txn): (kvs per prefix, revision)."""
        resp = await self._call(self.etcd.kv.Txn, pb.TxnRequest(success=[
            pb.RequestOp(request_range=pb.RangeRequest(key=p, range_end=prefix_range_end(p), keys_only=keys_only))
            for p in prefixes]))
        return [list(r.response_range.kvs) for r in resp.responses], resp.header.revision

    async def current_revision(self) -> int:
        """The cluster's current revision (a linearizable read of one key)."""
        resp = await self._call(self.etcd.kv.Range,
                                pb.RangeRequest(key=REGISTRY_PREFIX.encode(), count_only=True))
        return resp.header.revision

    # ---- writes ----

    async def create(self, resource: Resource, msg, *, claims: Claims | None = None,
                     dry_run: bool = False):
        """Stores a new object; AlreadyExists when its key is taken. Any
        resourceVersion on ``msg`` is ignored. With ``claims``, they are taken
        in the same Txn; ClaimTaken when the object was free but a claim was not.
        ``dry_run``: the same checks, nothing written (the object comes back
        without a resourceVersion)."""
        name = msg.metadata.name
        key = _key(resource, msg.metadata.namespace, name)
        if dry_run:
            if await self._get_kv(key) is not None:
                raise errors.already_exists(resource.qualified, name)
            return _copy(msg)
        put = await self._put(resource, key, msg)
        resp = await self._txn_if_unmodified(key, 0, put, claims)
        if not resp.succeeded:
            if self._current_after_miss(resp) is not None:
                raise errors.already_exists(resource.qualified, name)
            raise ClaimTaken(_taken_keys(resp, claims))
        return _with_resource_version(msg, resp.header.revision)

    async def update(self, resource: Resource, msg, expected_revision: int):
        """Replaces the object if it is still at ``expected_revision``:
        Conflict if it changed, NotFound if it is gone. A pure CAS write, even
        when nothing changed (guaranteed_update skips no-op writes)."""
        name = msg.metadata.name
        key = _key(resource, msg.metadata.namespace, name)
        if expected_revision <= 0:
            raise errors.invalid(resource.kind, name, [(
                "metadata.resourceVersion", "FieldValueInvalid",
                "Invalid value: 0x0: must be specified for an update")])
        put = await self._put(resource, key, msg)
        resp = await self._txn_if_unmodified(key, expected_revision, put)
        if resp.succeeded:
            return _with_resource_version(msg, resp.header.revision)
        if self._current_after_miss(resp) is None:
            raise errors.not_found(resource.qualified, name)
        raise errors.conflict(resource.qualified, name)

    async def guaranteed_update(self, resource: Resource, namespace: str, name: str,
                                update_fn: Callable[[Any], Any], *,
                                expected_revision: int | None = None,
                                claims_fn: Callable[[Any, Any], Any] | None = None,
                                dry_run: bool = False):
        """Read-modify-write that never loses a concurrent update.

        ``update_fn(current)`` gets a copy of the stored object (its
        resourceVersion set) and returns the new object, or the input
        unchanged (nothing is written; the current object is returned), or
        None to delete the object; it may be async and may raise an ApiError,
        which propagates. The write is a CAS on the mod_revision that was
        read: when another writer got in between, update_fn runs again on the
        newer object if ``expected_revision`` is None, else Conflict (and
        Conflict at once when the stored object is not at
        ``expected_revision``). NotFound when the object is (or goes) missing.
        Returns the stored object, or after a delete the deleted one with
        resourceVersion = the deletion's revision.

        ``claims_fn(current, new)`` (may be async; ``new`` is None for a
        delete) returns the Claims written with the change; when the object
        was unchanged but a claim was taken, ClaimTaken.

        ``dry_run``: update_fn and claims_fn run, nothing is written; the
        object that would be stored comes back (the current one for a delete)."""
        key = _key(resource, namespace, name)
        kv = await self._get_kv(key)
        while True:
            if kv is None:
                raise errors.not_found(resource.qualified, name)
            if expected_revision is not None and kv.mod_revision != expected_revision:
                raise errors.conflict(resource.qualified, name)
            current = self._decode_kv(resource, kv)
            new = update_fn(_copy(current))
            if inspect.isawaitable(new):
                new = await new
            if new is not None:
                if (new.metadata.name, _namespace_of(resource, new)) != (name, _namespace_of(resource, current)):
                    raise errors.internal(
                        f"storage: an update of {resource.name} {namespace}/{name} may not rename it")
                if _without_resource_version(new) == _without_resource_version(current):
                    return current
            claims = None
            if claims_fn is not None:
                claims = claims_fn(_copy(current), new)
                if inspect.isawaitable(claims):
                    claims = await claims
            if dry_run:
                return current if new is None else _with_resource_version(new, kv.mod_revision)
            if new is None:
                delete = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, prev_kv=True))
                resp = await self._txn_if_unmodified(key, kv.mod_revision, delete, claims)
                if resp.succeeded:
                    return self._deleted(resource, resp, current)
            else:
                put = await self._put(resource, key, new)
                resp = await self._txn_if_unmodified(key, kv.mod_revision, put, claims)
                if resp.succeeded:
                    return _with_resource_version(new, resp.header.revision)
            missed = self._current_after_miss(resp)
            if claims and missed is not None and missed.mod_revision == kv.mod_revision:
                raise ClaimTaken(_taken_keys(resp, claims))
            kv = missed

    async def delete(self, resource: Resource, namespace: str, name: str, *,
                     expected_revision: int | None = None, uid: str = ""):
        """Deletes the object if the preconditions hold (its uid is ``uid``,
        its resourceVersion is ``expected_revision``, when given): Conflict
        with Kubernetes' "Precondition failed" message if not, NotFound when it
        is missing. The delete is a CAS on the mod_revision read; a concurrent
        write makes it re-read and re-check. Returns the deleted object with
        resourceVersion = the deletion's revision (as a watch's DELETED event
        shows it)."""
        key = _key(resource, namespace, name)
        kv = await self._get_kv(key)
        while True:
            if kv is None:
                raise errors.not_found(resource.qualified, name)
            current = self._decode_kv(resource, kv)
            if uid and uid != current.metadata.uid:
                raise errors.conflict(resource.qualified, name, (
                    f"Precondition failed: UID in precondition: {uid}, "
                    f"UID in object meta: {current.metadata.uid}"))
            if expected_revision is not None and expected_revision != kv.mod_revision:
                raise errors.conflict(resource.qualified, name, (
                    f"Precondition failed: ResourceVersion in precondition: {expected_revision}, "
                    f"ResourceVersion in object meta: {kv.mod_revision}"))
            delete = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, prev_kv=True))
            resp = await self._txn_if_unmodified(key, kv.mod_revision, delete)
            if resp.succeeded:
                return self._deleted(resource, resp, current)
            kv = self._current_after_miss(resp)

    def _deleted(self, resource: Resource, resp: pb.TxnResponse, current):
        """The object a successful CAS delete removed, at the delete's revision."""
        prev = resp.responses[0].response_delete_range.prev_kvs
        if prev:
            return self._decode_kv(resource, prev[0], resp.header.revision)
        return _with_resource_version(current, resp.header.revision)

    # ---- reads ----

    async def get(self, resource: Resource, namespace: str, name: str):
        """The object (a linearizable read); NotFound when it is missing."""
        kv = await self._get_kv(_key(resource, namespace, name))
        if kv is None:
            raise errors.not_found(resource.qualified, name)
        return self._decode_kv(resource, kv)

    async def list(self, resource: Resource, namespace: str = "", *,
                   predicate: Callable[[Any], bool] | None = None, limit: int = 0,
                   continue_token: str = "", revision: int = 0) -> ListResult:
        """The objects under resource.prefix(namespace) ("" = every
        namespace), in key order.

        ``revision`` 0 reads the latest state (a quorum read), N > 0 reads the
        state at N: Expired ("too old resource version") once compacted,
        Timeout when N is in the future. ``predicate`` keeps the objects it
        accepts. With ``limit`` > 0 at most ``limit`` objects are returned and,
        when more may follow, a continue token; filtered lists keep reading
        pages until ``limit`` objects matched or the range ends. A continue
        token resumes at the same revision as its first page (so writes in
        between are not seen); it cannot be combined with ``revision``;
        garbage is BadRequest and a compacted one Expired."""
        prefix = resource.prefix(namespace).encode()
        range_end = prefix_range_end(prefix)
        if limit < 0:
            raise errors.bad_request(f"limit must not be negative: {limit}")
        if continue_token:
            if revision:
                raise errors.bad_request("specifying resource version is not allowed when using continue")
            start, revision = decode_continue(continue_token, prefix)
        else:
            start = prefix

        items: list = []
        page_size = limit
        last_key = b""
        count = 0
        while True:
            resp = await self._range_at(
                pb.RangeRequest(key=start, range_end=range_end, revision=revision, limit=page_size),
                continuing=bool(continue_token))
            if revision == 0:
                # every later page reads what the first one saw
                revision = resp.header.revision
            count = resp.count
            more = resp.more
            for kv in resp.kvs:
                if limit and len(items) >= limit:
                    more = True
                    break
                last_key = kv.key
                obj = self._decode_kv(resource, kv)
                if predicate is None or predicate(obj):
                    items.append(obj)
            if not limit or not more or len(items) >= limit:
                break
            # the predicate dropped objects: read bigger pages until the bucket fills
            page_size = min(page_size * 2, MAX_PAGE_SIZE)
            start = last_key + b"\x00"

        result = ListResult(items=items, revision=revision)
        if limit and more:
            result.continue_token = encode_continue(last_key + b"\x00", prefix, revision)
            if predicate is None:
                result.remaining_item_count = count - len(items)
        return result

    async def _range_at(self, request: pb.RangeRequest, *, continuing: bool) -> pb.RangeResponse:
        try:
            return await self.etcd.kv.Range(request, timeout=self.request_timeout)
        except grpc.RpcError as e:
            details = e.details() or ""
            if e.code() != grpc.StatusCode.OUT_OF_RANGE:
                raise etcd_error(e) from None
        if _COMPACTED in details:
            if continuing:
                raise errors.expired(CONTINUE_EXPIRED)
            compacted = await self._compact_revision(request.key, request.revision)
            raise errors.expired(f"too old resource version: {request.revision} ({compacted})")
        if _FUTURE in details:
            current = await self.current_revision()
            raise errors.timeout(f"Too large resource version: {request.revision}, current: {current}")
        raise errors.internal(f"etcd request failed: OUT_OF_RANGE: {details}")

    async def _compact_revision(self, key: bytes, revision: int) -> int:
        """The revision etcd has compacted to, which a Range does not tell: a
        watch from ``revision`` is refused with it. 0 when it cannot be learnt."""
        call = self.etcd.watch.Watch(timeout=self.request_timeout)
        try:
            await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                key=key, start_revision=revision)))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return 0
                if resp.compact_revision:
                    return resp.compact_revision
                if resp.canceled or resp.events:
                    return 0
        except grpc.RpcError:
            return 0
        finally:
            call.cancel()


# ---- continue tokens ----

def encode_continue(next_key: bytes, prefix: bytes, revision: int) -> str:
    """An opaque token: base64url JSON of (revision, key to resume at, relative to prefix)."""
    start = next_key[len(prefix):].decode("utf-8")
    raw = json.dumps({"v": CONTINUE_VERSION, "rv": revision, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str, prefix: bytes) -> tuple[bytes, int]:
    """(key to resume at, revision) of a token from encode_continue; BadRequest
    for anything else. The start key cannot climb out of ``prefix``."""
    def bad(why: str) -> errors.ApiError:
        return errors.bad_request(f"invalid continue token: continue key is not valid: {why}")

    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise bad("not a continue token") from None
    if not isinstance(data, dict):
        raise bad("not a continue token")
    if data.get("v") != CONTINUE_VERSION:
        raise bad(f"server does not recognize this encoded version {data.get('v')!r}")
    rv = data.get("rv")
    if not isinstance(rv, int) or isinstance(rv, bool) or rv <= 0:
        raise bad(f"incorrect encoded start resourceVersion (version {CONTINUE_VERSION})")
    start = data.get("start")
    if not isinstance(start, str) or not start:
        raise bad(f"encoded start key empty (version {CONTINUE_VERSION})")
    rooted = start if start.startswith("/") else "/" + start
    if posixpath.normpath(rooted) != rooted or rooted.startswith("//"):
        raise bad(start)
    return prefix + rooted[1:].encode("utf-8"), rv


# ---- helpers ----

def _header(resource: Resource) -> bytes:
    return MAGIC + resource.kind.encode() + b"\x00"


def _key(resource: Resource, namespace: str, name: str) -> bytes:
    # a name becomes one path segment of the key (as kube's NamespaceKeyFunc checks)
    if not name:
        raise errors.bad_request("resource name may not be empty")
    if name in (".", "..") or "/" in name or "%" in name:
        raise errors.bad_request(f"invalid resource name {name!r}: may not be '.' or '..' "
                                 f"and may not contain '/' or '%'")
    if resource.namespaced:
        if not namespace:
            raise errors.bad_request(f"{resource.name} are namespaced: a namespace is required")
        if namespace in (".", "..") or "/" in namespace or "%" in namespace:
            raise errors.bad_request(f"invalid namespace {namespace!r}")
    return resource.key(namespace, name).encode("utf-8")


def _namespace_of(resource: Resource, msg) -> str:
    return msg.metadata.namespace if resource.namespaced else ""


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _without_resource_version(msg):
    out = _copy(msg)
    out.metadata.ClearField("resource_version")
    return out


def _with_resource_version(msg, revision: int):
    out = _copy(msg)
    out.metadata.resource_version = str(revision)
    return out
