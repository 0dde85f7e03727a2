"""The ApiServer gRPC service: requests in, Registry calls, objects out.

Every ApiError becomes its gRPC status code with the meta.v1.Status in the
trailing metadata; anything else is logged and answered as InternalError, so
no Python traceback reaches a client and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict

import grpc
from google.protobuf import message_factory

from apiserver import errors, fieldmanager, resources
from apiserver.auth.audit import now as audit_now
from apiserver.auth.gate import Seen
from apiserver.errors import ApiError
from apiserver.fieldmanager import Manager
from apiserver.kubelet import KubeletClients, PodProxy
from apiserver.pb import api_pb2, api_pb2_grpc
from apiserver.registry import Registry
from grpclite import serialize

log = logging.getLogger("apiserver.service")


def _resource(name: str) -> resources.Resource:
    res = resources.lookup(name) if name else None
    if res is None:
        raise errors.not_found("the server could not find the requested resource", name)
    return res


def _object_of(obj: api_pb2.Object):
    res, msg = resources.unwrap(obj)
    if res is None:
        raise errors.bad_request("Object kind is missing: set one of the Object fields (pod, deployment, ...)")
    return res, msg


def _manager(name: str, subresource: str = "") -> Manager | None:
    """A request's field manager; none: managedFields are stored as sent (the
    controllers' writes, which record no ownership)."""
    if not name:
        return None
    fieldmanager.check_manager(name, apply=False)
    return Manager(name, subresource)


async def _fail(context, e: Exception):
    if not isinstance(e, ApiError):
        log.exception("internal error")
        e = errors.internal(f"internal error: {type(e).__name__}: {e}")
    await errors.abort(context, e)


def _translating_errors(method):
    """A unary call whose failures reach the client as their ApiError (or
    InternalError), never as a traceback."""
    @functools.wraps(method)
    async def call(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as e:
            await _fail(context, e)
    return call


async def _write_when_read(context, watcher, data: bytes) -> bool:
    """``data`` written once the client has read enough of what the stream
    holds (True); False, nothing written, if the watch cache terminated the
    watcher first (or the call ended)."""
    writable = asyncio.ensure_future(context.writable())
    terminated = asyncio.ensure_future(watcher.terminated())
    try:
        await asyncio.wait((writable, terminated), return_when=asyncio.FIRST_COMPLETED)
    finally:
        writable.cancel()
        terminated.cancel()
    return not terminated.done() and context.try_write(data)


class SharedWatchEvents:
    """The serialized WatchEvent of a cached object, built once and shared by
    every watch stream that sends it (the watch cache hands each watcher the
    same object, never modified). Keeps the last ``capacity`` events, with the
    objects they were built from, so an id is never reused while its entry
    lives. The bytes go out as they are: ``add_to_server`` registers Watch
    with a serializer that passes bytes through."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._events: OrderedDict[tuple[str, int], tuple[object, bytes]] = OrderedDict()

    def get(self, kind: str, msg, field: str) -> bytes:
        key = (kind, id(msg))
        hit = self._events.get(key)
        if hit is not None and hit[0] is msg:
            return hit[1]
        event = api_pb2.WatchEvent(type=kind)
        getattr(event.object, field).CopyFrom(msg)
        data = event.SerializeToString()
        self._events[key] = (msg, data)
        if len(self._events) > self.capacity:
            self._events.popitem(last=False)
        return data


def _gated(gate, name: str, method):
    """``method`` behind the gate: the call ends UNAUTHENTICATED or PERMISSION_DENIED
    (with the Status in the trailers) before the registry sees it. With an audit
    log, every call is logged once it ended."""
    audit = gate.audit

    @functools.wraps(method)
    async def call(request, context):
        seen = Seen()
        received = audit_now() if audit is not None else ""
        try:
            try:
                gate.grpc(name, request, context, seen)
            except ApiError as e:
                await errors.abort(context, e)
            return await method(request, context)
        finally:
            if audit is not None:
                code = context.code() or grpc.StatusCode.OK
                metadata = dict(context.invocation_metadata() or ())
                audit.event(received=received, uri=f"/apiserver.v1.ApiServer/{name}", verb=name.lower(),
                            user=seen.user, attrs=seen.attrs, impersonated=seen.impersonated, message=seen.failure,
                            code=errors.http_code_of(code),
                            source=context.peer(), user_agent=metadata.get("user-agent", ""))
    return call


def add_to_server(servicer: "ApiServerService", server, gate=None) -> None:
    """Registers the service as the generated code would, except that every
    response may also be given already serialized (bytes); with ``gate``
    (apiserver/auth/gate.py) every call is authenticated and authorized first."""
    service = api_pb2.DESCRIPTOR.services_by_name["ApiServer"]
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming \
            else grpc.unary_unary_rpc_method_handler
        fn = getattr(servicer, method.name)
        if gate is not None:
            fn = _gated(gate, method.name, fn)
        handlers[method.name] = make(fn,
                                     request_deserializer=request.FromString,
                                     response_serializer=serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class ApiServerService(api_pb2_grpc.ApiServerServicer):
    def __init__(self, registry: Registry, kubelets: KubeletClients | None = None) -> None:
        self.registry = registry
        self._events = SharedWatchEvents()
        self.kubelets = kubelets or KubeletClients()
        self._pods = PodProxy(registry, self.kubelets)

    @_translating_errors
    async def Create(self, request, context):
        res, msg = _object_of(request.object)
        return resources.wrap(await self.registry.create(res, msg, manager=_manager(request.field_manager),
                                                         dry_run=request.dry_run))

    @_translating_errors
    async def Get(self, request, context):
        res = _resource(request.resource)
        return resources.wrap(await self.registry.get(res, request.namespace, request.name))

    @_translating_errors
    async def List(self, request, context):
        res = _resource(request.resource)
        result = await self.registry.list(
            res, request.namespace, label_selector=request.label_selector,
            field_selector=request.field_selector, limit=request.limit,
            continue_token=request.continue_token, resource_version=request.resource_version)
        resp = api_pb2.ListResponse(resource_version=str(result.revision),
                                    continue_token=result.continue_token)
        field = res.field
        for item in result.items:
            getattr(resp.items.add(), field).CopyFrom(item)
        if result.remaining_item_count is not None:
            resp.remaining_item_count = result.remaining_item_count
        return resp

    @_translating_errors
    async def Update(self, request, context):
        res, msg = _object_of(request.object)
        return resources.wrap(await self.registry.update(res, msg, manager=_manager(request.field_manager),
                                                         dry_run=request.dry_run))

    @_translating_errors
    async def UpdateApproval(self, request, context):
        res, msg = _object_of(request.object)
        return resources.wrap(await self.registry.update_approval(
            res, msg, manager=_manager(request.field_manager, "approval"), dry_run=request.dry_run))

    @_translating_errors
    async def UpdateStatus(self, request, context):
        res, msg = _object_of(request.object)
        return resources.wrap(await self.registry.update_status(
            res, msg, manager=_manager(request.field_manager, "status"), dry_run=request.dry_run))

    @_translating_errors
    async def Patch(self, request, context):
        res = _resource(request.resource)
        subresource = "status" if request.status else ""
        if request.apply_patch:
            fieldmanager.check_manager(request.field_manager, apply=True)
            config = fieldmanager.parse_config(request.apply_patch, res, request.namespace, request.name)
            stored, _ = await self.registry.apply(
                res, request.namespace, request.name, config, Manager(request.field_manager, subresource),
                force=request.force, status=request.status, dry_run=request.dry_run)
            return resources.wrap(stored)
        if request.force:
            raise errors.invalid("PatchOptions.meta.k8s.io", "", [
                ("force", "FieldValueForbidden", "Forbidden: may not be specified for non-apply patch")])
        return resources.wrap(await self.registry.patch(
            res, request.namespace, request.name, request.merge_patch, status=request.status,
            manager=_manager(request.field_manager, subresource), dry_run=request.dry_run))

    @_translating_errors
    async def Delete(self, request, context):
        res = _resource(request.resource)
        grace = request.grace_period_seconds if request.HasField("grace_period_seconds") else None
        return resources.wrap(await self.registry.delete(
            res, request.namespace, request.name, uid=request.preconditions.uid,
            resource_version=request.preconditions.resource_version,
            propagation_policy=request.propagation_policy, grace_period_seconds=grace,
            dry_run=request.dry_run))

    async def Watch(self, request, context):
        """Errors before the first event end the call with their status code;
        later ones (a watcher expired for falling behind) arrive as an ERROR
        event, as in Kubernetes, and end the stream. A client that stops
        reading holds at most the stream's share of unsent data: once its
        watcher fell too far behind, the call ends with that error (after what
        is queued). The watcher is released however the call ends (the client
        cancelled or went away: this coroutine is cancelled where it waits)."""
        events = None
        try:
            res = _resource(request.resource)
            events = self.registry.watch(
                res, request.namespace, label_selector=request.label_selector,
                field_selector=request.field_selector, resource_version=request.resource_version,
                bookmarks=request.allow_watch_bookmarks)
            field = res.field
            started = False
            try:
                async for kind, msg in events:
                    started = True
                    data = self._events.get(kind, msg, field)
                    if not context.try_write(data) and not await _write_when_read(context, events, data):
                        if context.done():
                            return
                        # the watcher was terminated while the client did not read: the
                        # next step raises its error, which ends the call
            except ApiError as e:
                if not started or not context.writable_now():
                    raise
                context.try_write(api_pb2.WatchEvent(type="ERROR", status=e.to_status()).SerializeToString())
        except Exception as e:
            await _fail(context, e)
        finally:
            if events is not None and hasattr(events, "aclose"):
                await events.aclose()

    async def Logs(self, request, context):
        """pods/log, from the node's kubelet; written with context.write, so it waits for a
        client that does not read. Errors end the call with their status, before or after
        the first chunk."""
        try:
            await self._pods.logs(request, context)
        except Exception as e:
            await _fail(context, e)

    @_translating_errors
    async def Exec(self, request, context):
        return await self._pods.exec(request)
