"""A typed Python client of the apiserver, shared by controllers, kctl and users.

Synchronous (thread-safe: one gRPC channel, calls from any thread). Objects are
the typed messages (core_pb2.Pod, apps_pb2.Deployment, ...); a resource is
named as kubectl names it ("pods", "pod", "po", "Pod"). Every failure raises
``ApiError`` with Kubernetes' reason (NotFound, Conflict, ...).

    c = Client("127.0.0.1:6443")
    pod = c.create(core_pb2.Pod(metadata={"name": "web", "namespace": "default"}, spec=...))
    for event in c.watch("pods", resource_version=pods.resource_version):
        print(event.type, event.object.metadata.name)
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Iterator

import grpc
import yaml

from apiserver import resources
from apiserver.errors import ApiError, from_rpc_error
from apiserver.pb import api_pb2, api_pb2_grpc
from apiserver.rest import kubeconfig as kubeconfigs

DEFAULT_SERVER = "127.0.0.1:6443"
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


def _resource(kind: str) -> resources.Resource:
    res = resources.lookup(kind)
    if res is None:
        raise ApiError("NotFound", f'the server doesn\'t have a resource type "{kind}"')
    return res


@dataclass
class ListResult:
    items: list
    resource_version: str
    continue_token: str
    remaining_item_count: int | None = None


@dataclass
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: object  # the typed message (for BOOKMARK only metadata.resource_version is set)


class Watch:
    """An iterator of WatchEvents; an ERROR event from the server raises ApiError.
    ``stop()`` (or leaving a ``with`` block) cancels the stream from any thread."""

    def __init__(self, call, res: resources.Resource) -> None:
        self._call = call
        self._res = res
        self.stopped = threading.Event()

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            for event in self._call:
                if event.type == "ERROR":
                    raise ApiError.from_status(event.status)
                yield WatchEvent(event.type, getattr(event.object, self._res.field))
        except grpc.RpcError as e:
            if self.stopped.is_set() and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e) from None

    def stop(self) -> None:
        self.stopped.set()
        self._call.cancel()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class LogStream:
    """Byte chunks of a container's log; ``stop()`` (from any thread) ends it quietly."""

    def __init__(self, call) -> None:
        self._call = call
        self.stopped = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._call:
                yield chunk.data
        except grpc.RpcError as e:
            if self.stopped.is_set() and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e) from None

    def stop(self) -> None:
        self.stopped.set()
        self._call.cancel()


def credentials_for(server: str, kubeconfig: str | None = None) -> kubeconfigs.Credentials | None:
    """The kubeconfig credentials to dial ``server`` with: ``kubeconfig``'s, or
    those of $KUBECONFIG's first file when it names this very server (another
    cluster's credentials are never sent here)."""
    if kubeconfig:
        return kubeconfigs.load(kubeconfig)
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if not env or not os.path.exists(env):
        return None
    try:
        creds = kubeconfigs.load(env)
    except (OSError, ValueError):
        return None
    return creds if creds.address == server or not server else None


def channel_for(server: str, creds: kubeconfigs.Credentials | None, options=()) -> grpc.Channel:
    """A gRPC channel to ``server``: TLS with the kubeconfig's CA, client
    certificate and bearer token when it says https://, else plain text."""
    options = [*_CHANNEL_OPTIONS, *options]
    if creds is None or not creds.tls:
        return grpc.insecure_channel(server, options=options)
    channel_creds = grpc.ssl_channel_credentials(root_certificates=creds.ca or None,
                                                 private_key=creds.key or None,
                                                 certificate_chain=creds.cert or None)
    if creds.token:
        channel_creds = grpc.composite_channel_credentials(
            channel_creds, grpc.access_token_call_credentials(creds.token))
    return grpc.secure_channel(server, channel_creds, options=options)


class Client:
    """``kubeconfig``: whose credentials to use (default: $KUBECONFIG's when
    it names ``server``); ``server`` "" means the kubeconfig's server."""

    def __init__(self, server: str = DEFAULT_SERVER, *, timeout: float = 30.0,
                 kubeconfig: str | None = None) -> None:
        creds = credentials_for(server, kubeconfig)
        self.server = server or (creds.address if creds else DEFAULT_SERVER)
        self.timeout = timeout
        self._kubeconfig = kubeconfig
        self._channel = channel_for(self.server, creds)
        self._stub = api_pb2_grpc.ApiServerStub(self._channel)
        self._retired: list[tuple[threading.Timer, object]] = []  # (its closing timer, old channel)

    def reload_credentials(self, grace: float = 5.0) -> None:
        """Dials with the kubeconfig's credentials as they are now (a kubelet's rotated client
        certificate): calls from now on go on a new connection; the old one is closed after
        ``grace`` seconds, ending the calls still on it (watches start again), as the kubelet
        closes its connections once its certificate rotated."""
        creds = credentials_for(self.server, self._kubeconfig)
        old, self._channel = self._channel, channel_for(self.server, creds)
        self._stub = api_pb2_grpc.ApiServerStub(self._channel)
        timer = threading.Timer(grace, old.close)
        timer.daemon = True
        timer.start()
        self._retired = [(t, c) for t, c in self._retired if t.is_alive()] + [(timer, old)]

    def close(self) -> None:
        for timer, channel in self._retired:  # connections still in their grace: closed now
            timer.cancel()
            channel.close()
        self._retired = []
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, *, wait: bool = True):
        try:
            return method(request, timeout=self.timeout, wait_for_ready=wait)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # ---- objects ----

    def create(self, obj):
        return self._unwrap(self._call(self._stub.Create, api_pb2.CreateRequest(object=resources.wrap(obj))))

    def get(self, kind: str, name: str, namespace: str = "default"):
        res = _resource(kind)
        return self._unwrap(self._call(self._stub.Get, api_pb2.GetRequest(
            resource=res.name, namespace=namespace if res.namespaced else "", name=name)))

    def list(self, kind: str, namespace: str = "", *, label_selector: str = "",
             field_selector: str = "", limit: int = 0, continue_token: str = "",
             resource_version: str = "") -> ListResult:
        """One page (everything when limit is 0); namespace "" lists every namespace."""
        res = _resource(kind)
        resp = self._call(self._stub.List, api_pb2.ListRequest(
            resource=res.name, namespace=namespace, label_selector=label_selector,
            field_selector=field_selector, limit=limit, continue_token=continue_token,
            resource_version=resource_version))
        remaining = resp.remaining_item_count if resp.HasField("remaining_item_count") else None
        return ListResult([getattr(o, res.field) for o in resp.items], resp.resource_version,
                          resp.continue_token, remaining)

    def list_all(self, kind: str, namespace: str = "", *, page_size: int = 500, **selectors) -> ListResult:
        """Every item, read page by page at one resourceVersion."""
        first = self.list(kind, namespace, limit=page_size, **selectors)
        items, token = list(first.items), first.continue_token
        while token:
            page = self.list(kind, namespace, limit=page_size, continue_token=token, **selectors)
            items.extend(page.items)
            token = page.continue_token
        return ListResult(items, first.resource_version, "")

    def update(self, obj):
        return self._unwrap(self._call(self._stub.Update, api_pb2.UpdateRequest(object=resources.wrap(obj))))

    def update_status(self, obj):
        return self._unwrap(self._call(self._stub.UpdateStatus,
                                       api_pb2.UpdateRequest(object=resources.wrap(obj))))

    def update_approval(self, obj):
        """A CertificateSigningRequest's approval subresource (its Approved/Denied conditions)."""
        return self._unwrap(self._call(self._stub.UpdateApproval,
                                       api_pb2.UpdateRequest(object=resources.wrap(obj))))

    def patch(self, kind: str, name: str, patch: dict | str, namespace: str = "default", *,
              status: bool = False):
        """An RFC 7386 JSON merge patch over the object's Kubernetes JSON form."""
        res = _resource(kind)
        text = patch if isinstance(patch, str) else json.dumps(patch)
        return self._unwrap(self._call(self._stub.Patch, api_pb2.PatchRequest(
            resource=res.name, namespace=namespace if res.namespaced else "", name=name,
            merge_patch=text, status=status)))

    def apply(self, config: dict | str, *, field_manager: str, force: bool = False, status: bool = False,
              dry_run: bool = False):
        """Server-side apply of ``config`` (the object's Kubernetes JSON as a dict,
        or YAML/JSON text) by ``field_manager``: creates the object if missing."""
        data = yaml.safe_load(config) if isinstance(config, str) else config
        res = _resource(data.get("kind", "") if isinstance(data, dict) else "")
        meta = data.get("metadata") or {}
        text = config if isinstance(config, str) else json.dumps(config)
        return self._unwrap(self._call(self._stub.Patch, api_pb2.PatchRequest(
            resource=res.name, namespace=(meta.get("namespace") or "default") if res.namespaced else "",
            name=meta.get("name", ""), apply_patch=text, field_manager=field_manager, force=force,
            status=status, dry_run=dry_run)))

    def delete(self, kind: str, name: str, namespace: str = "default", *, uid: str = "",
               resource_version: str = "", propagation_policy: str = "",
               grace_period_seconds: int | None = None):
        res = _resource(kind)
        req = api_pb2.DeleteRequest(resource=res.name, namespace=namespace if res.namespaced else "",
                                    name=name, propagation_policy=propagation_policy)
        req.preconditions.uid = uid
        req.preconditions.resource_version = resource_version
        if grace_period_seconds is not None:
            req.grace_period_seconds = grace_period_seconds
        return self._unwrap(self._call(self._stub.Delete, req))

    def watch(self, kind: str, namespace: str = "", *, label_selector: str = "",
              field_selector: str = "", resource_version: str = "", bookmarks: bool = False,
              timeout: float | None = None) -> Watch:
        res = _resource(kind)
        call = self._stub.Watch(api_pb2.WatchRequest(
            resource=res.name, namespace=namespace, label_selector=label_selector,
            field_selector=field_selector, resource_version=resource_version,
            allow_watch_bookmarks=bookmarks), timeout=timeout, wait_for_ready=True)
        return Watch(call, res)

    # ---- pods/log and pods/exec (through the node's kubelet) ----

    def logs(self, name: str, namespace: str = "default", *, container: str = "",
             follow: bool = False, previous: bool = False, tail_lines: int | None = None,
             limit_bytes: int | None = None, since_seconds: int | None = None,
             since_time: str = "", timestamps: bool = False, stream: str = "") -> "LogStream":
        """A container's log as an iterator of byte chunks (PodLogOptions' fields); with
        ``follow`` it lasts until the container exits or ``stop()`` is called."""
        req = api_pb2.PodLogsRequest(namespace=namespace, name=name, container=container,
                                     follow=follow, previous=previous, since_time=since_time,
                                     timestamps=timestamps, stream=stream)
        for field, value in (("tail_lines", tail_lines), ("limit_bytes", limit_bytes),
                             ("since_seconds", since_seconds)):
            if value is not None:
                setattr(req, field, value)
        return LogStream(self._stub.Logs(req, timeout=None if follow else self.timeout,
                                         wait_for_ready=True))

    def exec(self, name: str, command: list[str], namespace: str = "default", *,
             container: str = "", timeout_seconds: int = 0) -> api_pb2.PodExecResponse:
        """Runs ``command`` in the container without input or a terminal: its stdout, stderr
        and exit_code. No deadline of the client's own: the command takes what it takes
        (``timeout_seconds``: the kubelet's limit)."""
        try:
            return self._stub.Exec(api_pb2.PodExecRequest(
                namespace=namespace, name=name, container=container, command=list(command),
                timeout_seconds=timeout_seconds), wait_for_ready=True)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    @staticmethod
    def _unwrap(obj: api_pb2.Object):
        return resources.unwrap(obj)[1]
