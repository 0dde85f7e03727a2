"""The REST API: a request's path and verb to the registry call that serves
it, the same calls the gRPC API makes (apiserver/service.py), so both APIs
behave alike. JSON in and out; YAML bodies accepted.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

import yaml

from apiserver import errors, manifest
from apiserver.admission.webhooks import WARNINGS
from apiserver.auth.audit import now as audit_now
from apiserver.auth.gate import Seen
from apiserver.errors import ApiError
from apiserver.registry import Registry, parse_resource_version
from apiserver.rest import (apply, authapi, convert, discovery, metricsapi, nodeproxy, openapi, patch, podproxy,
                            protobuf, routing, streams, tables, watch)
from apiserver.rest.http1 import Request, Response, json_response
from apiserver.rest.status import error_response, http_error, success

log = logging.getLogger("apiserver.rest")

FIELD_VALIDATION = {"", "Strict", "Warn", "Ignore"}
# how many times a patch is re-applied when another writer got in between
PATCH_ATTEMPTS = 5


def _strip_kind(obj: dict) -> dict:
    obj.pop("apiVersion", None)
    obj.pop("kind", None)
    return obj


class RestApi:
    def __init__(self, registry: Registry, kubelets=None, gate=None, pod_network=None) -> None:
        self.registry = registry
        self.streams = streams.PodStreams(registry, kubelets)
        self.node_proxy = nodeproxy.NodeProxy(registry, kubelets)
        self.workload_proxy = podproxy.WorkloadProxy(registry, pod_network)
        self.metrics = metricsapi.MetricsApi(registry, kubelets)
        # authentication and authorization (apiserver/auth/gate.py); None: everyone may do anything
        self.gate = gate
        self.items = convert.ItemCache()
        self.lines = watch.SharedLines()

    async def handle(self, req: Request) -> Response:
        audit = self.gate.audit if self.gate is not None else None
        received = audit_now() if audit is not None else ""
        seen = Seen()
        admission_warnings: list[str] = []
        WARNINGS.set(admission_warnings)  # this request's task: the webhooks' warnings land here
        try:
            if self.gate is not None:
                req.user = self.gate.rest(req.peercert, req.method, req.path.rstrip("/") or "/",
                                          req.headers, req.query, seen, req.header_lines, req.cert_error)
            resp = await self._route(req)
        except ApiError as e:
            resp = error_response(e)
        _with_warnings(resp, admission_warnings)
        if audit is not None:
            uri = req.path + (f"?{urlencode(req.query, doseq=True)}" if req.query else "")
            audit.event(received=received, uri=uri, verb=req.method.lower(), user=seen.user, attrs=seen.attrs,
                        impersonated=seen.impersonated, code=resp.status, source=req.source, message=seen.failure,
                        user_agent=req.headers.get("user-agent", ""),
                        stage="ResponseStarted" if resp.stream is not None else "ResponseComplete")
        return resp

    async def _route(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        if self.gate is not None and path.startswith(authapi.REVIEW_PREFIXES):
            resp = authapi.route(self.gate, req, path)
            if resp is not None:
                return resp
        if path.startswith(metricsapi.PREFIX):
            resp = await self.metrics.handle(req, path)
            if resp is not None:
                return resp
        try:
            target = routing.parse(path)
        except routing.NoRoute:
            return http_error(404, "the server could not find the requested resource")
        if target is not None:
            return await self._resource(req, target)
        if req.method not in ("GET", "HEAD"):
            return http_error(405, "the server does not allow this method on the requested resource")
        return self._discovery(req, path)

    # ---- discovery ----

    def _discovery(self, req: Request, path: str) -> Response:
        accept = req.headers.get("accept", "")
        if path == "/version":
            return json_response(discovery.version())
        if path in ("/healthz", "/livez", "/readyz"):
            return Response(200, b"ok", "text/plain; charset=utf-8")
        if path in ("/api", "/apis"):
            aggregated = discovery.wants_aggregated(accept)
            if aggregated:
                version = "apidiscovery.k8s.io/" + aggregated.split("v=")[1].split(";")[0]
                return json_response(discovery.aggregated(path == "/api", version),
                                     content_type=aggregated)
            return json_response(discovery.api_versions() if path == "/api" else discovery.api_group_list())
        if path == "/api/v1":
            return json_response(discovery.resource_list("v1"))
        parts = path.split("/")[1:]
        if parts[0] == "apis" and len(parts) == 2:
            group = discovery.api_group(parts[1])
            if group is not None:
                return json_response(group)
        if parts[0] == "apis" and len(parts) == 3:
            listed = discovery.resource_list(f"{parts[1]}/{parts[2]}")
            if listed is not None:
                return json_response(listed)
        if parts[0] == "openapi":
            doc = openapi.document(path)
            if isinstance(doc, bytes):
                return Response(200, doc, "application/json")
            if doc is not None:
                return json_response(doc)
        return http_error(404, "the server could not find the requested resource")

    # ---- resources ----

    async def _resource(self, req: Request, t: routing.Target) -> Response:
        m = req.method
        if t.subresource == "scale":
            if t.res.name not in discovery.SCALABLE:
                return http_error(404, "the server could not find the requested resource")
            return await self._scale(req, t)
        if t.subresource in streams.SUBRESOURCES and t.res.name == "pods" and t.name:
            return await self.streams.handle(req, t)
        if t.subresource == "proxy" and t.res.name in routing.PROXIED and t.name:
            if t.res.name == "nodes":
                return await self.node_proxy.handle(req, t)
            if t.namespace:
                return await self.workload_proxy.handle(req, t)
        if t.subresource == "token" and t.res.name == "serviceaccounts" and t.name:
            return await authapi.token_request(self.gate, self.registry, req, t.namespace, t.name)
        if t.subresource == "eviction" and t.res.name == "pods":
            if m != "POST":
                return http_error(405, "the server does not allow this method on the requested resource")
            return await self._evict(req, t)
        if t.subresource == "binding" and t.res.name == "pods" and t.name:
            if m != "POST":
                return http_error(405, "the server does not allow this method on the requested resource")
            return await self._bind(req, t)
        if t.subresource == "approval" and t.res.name == "certificatesigningrequests" and t.name:
            if m in ("GET", "HEAD"):
                obj = await self.registry.get(t.res, t.namespace, t.name)
                return self._object(req, t, convert.to_json(obj))
            if m != "PUT":
                return http_error(405, "the server does not allow this method on the requested resource")
            return await self._update(req, t)
        if t.subresource not in ("", "status") or (t.subresource == "status" and not t.res.has_status):
            return http_error(404, "the server could not find the requested resource")
        if t.res.namespaced and not t.namespace and (t.name or m not in ("GET", "HEAD")):
            # kube-apiserver needs a namespace in the path for these
            return http_error(404, "the server could not find the requested resource")
        if not t.name:
            if m in ("GET", "HEAD"):
                if _flag(req.param("watch")):
                    return await self._watch(req, t)
                return await self._list(req, t)
            if m == "POST":
                return await self._create(req, t)
            if m == "DELETE":
                return await self._delete_collection(req, t)
        else:
            if m in ("GET", "HEAD"):
                obj = await self.registry.get(t.res, t.namespace, t.name)
                return self._object(req, t, convert.to_json(obj))
            if m == "PUT":
                return await self._update(req, t)
            if m == "PATCH":
                return await self._patch(req, t)
            if m == "DELETE" and not t.subresource:
                return await self._delete(req, t)
        return http_error(405, "the server does not allow this method on the requested resource")

    def _object(self, req: Request, t: routing.Target, obj: dict, status: int = 200) -> Response:
        table = tables.wants_table(req.headers.get("accept", ""))
        if table:
            meta = {"resourceVersion": obj.get("metadata", {}).get("resourceVersion", "")}
            return json_response(tables.table(t.res.name, [obj], meta, req.param("includeObject")),
                                 status, content_type=table)
        return json_response(obj, status)

    async def _list(self, req: Request, t: routing.Target) -> Response:
        try:
            limit = int(req.param("limit") or 0)
        except ValueError:
            raise errors.bad_request(f'invalid limit: "{req.param("limit")}"') from None
        rv = req.param("resourceVersion")
        match = req.param("resourceVersionMatch")
        # apimachinery's ValidateListOptions; both matches are served by reading at rv,
        # which is exactly rv and not older than it
        if match and not rv:
            raise _invalid_list_options("resourceVersionMatch",
                                        "resourceVersionMatch is forbidden unless resourceVersion is provided")
        if match not in ("", "Exact", "NotOlderThan"):
            raise _invalid_list_options("resourceVersionMatch", f'"{match}": supported values: "Exact", "NotOlderThan"')
        if match == "Exact" and rv == "0":
            raise _invalid_list_options("resourceVersionMatch",
                                        'resourceVersionMatch "exact" is forbidden for resourceVersion "0"')
        if req.param("sendInitialEvents"):
            raise _invalid_list_options("sendInitialEvents", "sendInitialEvents is forbidden for list")
        result = await self.registry.list(
            t.res, t.namespace, label_selector=req.param("labelSelector"),
            field_selector=req.param("fieldSelector"), limit=limit,
            continue_token=req.param("continue"), resource_version="" if rv == "0" else rv)
        meta = {"resourceVersion": str(result.revision)}
        if result.continue_token:
            meta["continue"] = result.continue_token
        if result.remaining_item_count is not None:
            meta["remainingItemCount"] = result.remaining_item_count
        table = tables.wants_table(req.headers.get("accept", ""))
        if table:
            items = [convert.to_json(o) for o in result.items]
            return json_response(tables.table(t.res.name, items, meta, req.param("includeObject")),
                                 content_type=table)
        head = json.dumps({"kind": f"{t.res.kind}List", "apiVersion": t.res.api_version, "metadata": meta},
                          separators=(",", ":")).encode()
        body = b"".join((head[:-1], b',"items":[', b",".join(self.items.item(o) for o in result.items), b"]}\n"))
        return Response(200, body, "application/json")

    async def _watch(self, req: Request, t: routing.Target) -> Response:
        try:
            timeout = float(req.param("timeoutSeconds") or 0)
        except ValueError:
            raise errors.bad_request(f'invalid timeoutSeconds: "{req.param("timeoutSeconds")}"') from None
        rv = req.param("resourceVersion")
        bookmarks = _flag(req.param("allowWatchBookmarks"))
        selectors = dict(label_selector=req.param("labelSelector"), field_selector=req.param("fieldSelector"))
        initial = None
        if _flag(req.param("sendInitialEvents")):
            initial = await self._initial_events(req, t, rv, bookmarks, selectors)
            rv = str(initial.revision)
        elif req.param("resourceVersionMatch"):
            raise _invalid_list_options("resourceVersionMatch", "resourceVersionMatch is forbidden for watch")
        events = self.registry.watch(t.res, t.namespace, resource_version="" if rv == "0" else rv,
                                     bookmarks=bookmarks, **selectors)
        table = tables.wants_table(req.headers.get("accept", ""))
        body = watch.stream(events, t.res, timeout=timeout or None, table_type=table,
                            include=req.param("includeObject"),
                            initial=None if initial is None else (initial.items, initial.revision),
                            shared=self.lines)
        return Response(200, content_type="application/json", stream=body,
                        headers=[("X-Content-Type-Options", "nosniff")])

    async def _initial_events(self, req: Request, t: routing.Target, rv: str, bookmarks: bool, selectors):
        """sendInitialEvents (a watch that starts with the state, KEP-3157): the
        objects now, read from one revision, which the watch then continues from.
        apimachinery's ListOptions validation: it needs resourceVersionMatch=NotOlderThan
        and allowWatchBookmarks (the end of the initial events is a bookmark)."""
        if req.param("resourceVersionMatch") != "NotOlderThan":
            raise _invalid_list_options("resourceVersionMatch",
                                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
        if not bookmarks:
            raise _invalid_list_options("allowWatchBookmarks",
                                        "sendInitialEvents requires setting allowWatchBookmarks to true")
        floor = parse_resource_version(rv) or 0
        result = await self.registry.list(t.res, t.namespace, **selectors)
        if result.revision < floor:
            raise errors.timeout(f"Too large resource version: {floor}, current: {result.revision}")
        return result

    # ---- bodies ----

    def _decode(self, req: Request, t: routing.Target, warnings: list[str]):
        """The typed object in the request body, checked against the path."""
        validation = req.param("fieldValidation")
        if validation not in FIELD_VALIDATION:
            raise errors.bad_request(f'fieldValidation must be one of "Ignore", "Warn" or "Strict", not "{validation}"')
        data = _parse_body(req)
        if isinstance(data, dict):
            data.setdefault("kind", t.res.kind)
            data.setdefault("apiVersion", t.res.api_version)
            if data.get("kind") != t.res.kind:
                raise errors.bad_request(
                    f"the object provided is unrecognized (must be of type {t.res.kind}): "
                    f"{data.get('kind')} in version \"{data.get('apiVersion')}\" is not {t.res.kind}")
        convert.normalize_times(data)
        unknown: list[str] | None = None if validation == "Strict" else []
        msg = manifest.from_dict(data, unknown_fields=unknown)
        if unknown and validation in ("", "Warn"):
            warnings.extend(f'unknown field "{p}"' for p in unknown)
        ns = msg.metadata.namespace
        if t.res.namespaced:
            if ns and t.namespace and ns != t.namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            msg.metadata.namespace = t.namespace or ns
        if t.name and msg.metadata.name and msg.metadata.name != t.name:
            raise errors.bad_request("the name of the object "
                                     f"({msg.metadata.name}) does not match the name on the URL ({t.name})")
        if t.name:
            msg.metadata.name = t.name
        return msg

    async def _create(self, req: Request, t: routing.Target) -> Response:
        warnings: list[str] = []
        msg = self._decode(req, t, warnings)
        created = await self.registry.create(t.res, msg, manager=apply.manager(req, t), dry_run=_dry_run(req))
        return _with_warnings(self._object(req, t, convert.to_json(created), 201), warnings)

    async def _update(self, req: Request, t: routing.Target) -> Response:
        warnings: list[str] = []
        msg = self._decode(req, t, warnings)
        write = {"status": self.registry.update_status, "approval": self.registry.update_approval}.get(
            t.subresource, self.registry.update)
        stored = await write(t.res, msg, manager=apply.manager(req, t), dry_run=_dry_run(req))
        return _with_warnings(self._object(req, t, convert.to_json(stored)), warnings)

    async def _apply(self, req: Request, t: routing.Target) -> Response:
        """Server-side apply (apiserver/rest/apply.py); 201 when it created the object."""
        validation = req.param("fieldValidation")
        if validation not in FIELD_VALIDATION:
            raise errors.bad_request(f'fieldValidation must be one of "Ignore", "Warn" or "Strict", not "{validation}"')
        warnings: list[str] = []
        manager = apply.manager(req, t, apply=True)
        force = apply.check_force(req, apply=True)
        config = apply.parse_config(req, t, validation, warnings)
        stored, created = await self.registry.apply(t.res, t.namespace, t.name, config, manager, force=force,
                                                    status=t.subresource == "status", dry_run=_dry_run(req))
        return _with_warnings(self._object(req, t, convert.to_json(stored), 201 if created else 200), warnings)

    async def _patch(self, req: Request, t: routing.Target) -> Response:
        kind = req.headers.get("content-type", "").split(";")[0].strip()
        if kind not in (patch.MERGE, patch.JSON_PATCH, patch.STRATEGIC, patch.APPLY):
            return http_error(415, f"the body of the request was in an unknown format - accepted media types "
                                   f"include: {patch.JSON_PATCH}, {patch.MERGE}, {patch.APPLY}, {patch.STRATEGIC}")
        if kind == patch.APPLY:
            return await self._apply(req, t)
        apply.check_force(req, apply=False)
        manager = apply.manager(req, t)
        dry_run = _dry_run(req)
        status = t.subresource == "status"
        if kind == patch.MERGE:
            # the same code path as the gRPC API's Patch
            merge = patch.parse(req.body, kind)
            convert.normalize_times(merge)
            stored = await self.registry.patch(t.res, t.namespace, t.name, json.dumps(merge), status=status,
                                               manager=manager, dry_run=dry_run)
            return self._object(req, t, convert.to_json(stored))
        for attempt in range(PATCH_ATTEMPTS):
            current = await self.registry.get(t.res, t.namespace, t.name)
            doc = convert.to_json(current)
            patched = patch.apply(doc, kind, req.body)
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch did not produce an object")
            convert.normalize_times(patched)
            for key in ("apiVersion", "kind"):
                if patched.get(key) != doc[key]:
                    raise errors.bad_request(f"the {key} of the patched object does not match the object's")
            pinned = patched.get("metadata", {}).get("resourceVersion") != doc["metadata"]["resourceVersion"]
            msg = manifest.from_dict(patched)
            msg.metadata.namespace = current.metadata.namespace
            msg.metadata.name = t.name
            try:
                write = self.registry.update_status if status else self.registry.update
                stored = await write(t.res, msg, manager=manager, dry_run=dry_run)
            except ApiError as e:
                if e.reason == "Conflict" and not pinned and attempt < PATCH_ATTEMPTS - 1:
                    continue
                raise
            return self._object(req, t, convert.to_json(stored))
        raise errors.conflict(t.res.qualified, t.name)

    async def _delete(self, req: Request, t: routing.Target) -> Response:
        opts = _delete_options(req)
        pre = opts.get("preconditions") or {}
        grace = opts.get("gracePeriodSeconds")
        dry_run = _dry_run(req, opts)
        gone = await self.registry.delete(
            t.res, t.namespace, t.name, uid=pre.get("uid") or "",
            resource_version=pre.get("resourceVersion") or "",
            propagation_policy=opts.get("propagationPolicy") or "",
            grace_period_seconds=int(grace) if grace is not None else None, dry_run=dry_run)
        obj = convert.to_json(gone)
        # a dry run answers what the delete would: the object while it would stay
        still_there = gone.metadata.deletion_timestamp and (dry_run or await self._exists(t))
        if still_there:
            return json_response(obj, 200)  # graceful or finalizers pending: the object, as kube answers
        return json_response(success(t.name, t.res, gone.metadata.uid))

    async def _exists(self, t: routing.Target) -> bool:
        try:
            await self.registry.get(t.res, t.namespace, t.name)
            return True
        except ApiError as e:
            if e.reason == "NotFound":
                return False
            raise

    async def _delete_collection(self, req: Request, t: routing.Target) -> Response:
        if t.res.name == "namespaces":
            return http_error(405, "the server does not allow this method on the requested resource")
        opts = _delete_options(req)
        listed = await self.registry.list(t.res, t.namespace, label_selector=req.param("labelSelector"),
                                          field_selector=req.param("fieldSelector"))
        items = []
        dry_run = _dry_run(req, opts)
        for obj in listed.items:
            try:
                gone = await self.registry.delete(
                    t.res, obj.metadata.namespace, obj.metadata.name,
                    propagation_policy=opts.get("propagationPolicy") or "",
                    grace_period_seconds=opts.get("gracePeriodSeconds"), dry_run=dry_run)
            except ApiError as e:
                if e.reason == "NotFound":
                    continue
                raise
            items.append(_strip_kind(convert.to_json(gone)))
        return json_response({"kind": f"{t.res.kind}List", "apiVersion": t.res.api_version,
                              "metadata": {"resourceVersion": str(listed.revision)}, "items": items})

    # ---- eviction (policy/v1) ----

    async def _evict(self, req: Request, t: routing.Target) -> Response:
        """A pod deleted with the Eviction's DeleteOptions. No PodDisruptionBudget
        kind is served, so none can refuse it (kube would answer 429 then)."""
        eviction = _parse_body(req)
        if not isinstance(eviction, dict) or eviction.get("kind", "Eviction") != "Eviction":
            raise errors.bad_request("the body of an eviction must be a policy/v1 Eviction")
        name = (eviction.get("metadata") or {}).get("name", "")
        if name != t.name:
            raise errors.bad_request("name in URL does not match name in Eviction object")
        opts = eviction.get("deleteOptions") or {}
        pre = opts.get("preconditions") or {}
        grace = opts.get("gracePeriodSeconds")
        await self.registry.delete(
            t.res, t.namespace, t.name, uid=pre.get("uid") or "",
            resource_version=pre.get("resourceVersion") or "",
            propagation_policy=opts.get("propagationPolicy") or "",
            grace_period_seconds=int(grace) if grace is not None else None, dry_run=_dry_run(req, opts))
        return json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "code": 201}, 201)

    # ---- binding (core/v1) ----

    async def _bind(self, req: Request, t: routing.Target) -> Response:
        """A pod assigned to the Binding's target node (what kube-scheduler posts)."""
        binding = _parse_body(req)
        if not isinstance(binding, dict) or binding.get("kind", "Binding") != "Binding":
            raise errors.bad_request("the body of a binding must be a v1 Binding")
        meta = binding.get("metadata") or {}
        if meta.get("name", "") != t.name:
            raise errors.bad_request("name in URL does not match name in Binding object")
        target = binding.get("target") or {}
        causes = []
        if target.get("kind", "") not in ("", "Node"):
            causes.append(("target.kind", "FieldValueNotSupported",
                           f'Unsupported value: "{target.get("kind")}": supported values: "Node", "<empty>"'))
        if not target.get("name"):
            causes.append(("target.name", "FieldValueRequired", "Required value"))
        if causes:
            raise errors.invalid("Binding", t.name, causes)
        annotations = meta.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
            raise errors.bad_request("metadata.annotations of a Binding must map strings to strings")
        await self.registry.bind(t.namespace, t.name, target["name"], annotations, dry_run=_dry_run(req, {}))
        return json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "code": 201}, 201)

    # ---- scale (autoscaling/v1) ----

    def _scale_of(self, obj) -> dict:
        meta = obj.metadata
        selector = ",".join(f"{k}={v}" for k, v in sorted(obj.spec.selector.match_labels.items()))
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid,
                             "resourceVersion": meta.resource_version,
                             "creationTimestamp": meta.creation_timestamp},
                "spec": {"replicas": obj.spec.replicas},
                "status": {"replicas": obj.status.replicas, "selector": selector}}

    async def _scale(self, req: Request, t: routing.Target) -> Response:
        current = await self.registry.get(t.res, t.namespace, t.name)
        if req.method in ("GET", "HEAD"):
            return json_response(self._scale_of(current))
        if req.method == "PUT":
            scale = _parse_body(req)
        elif req.method == "PATCH":
            kind = req.headers.get("content-type", "").split(";")[0].strip()
            if kind not in (patch.MERGE, patch.JSON_PATCH, patch.STRATEGIC):
                raise errors.bad_request(f"unsupported patch type {kind}")
            scale = patch.apply(self._scale_of(current), kind, req.body)
        else:
            return http_error(405, "the server does not allow this method on the requested resource")
        replicas = (scale.get("spec") or {}).get("replicas") if isinstance(scale, dict) else None
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise errors.invalid("Scale", t.name, [("spec.replicas", "FieldValueInvalid", "Invalid value: must be an integer")])
        if replicas < 0:
            raise errors.invalid("Scale", t.name, [("spec.replicas", "FieldValueInvalid",
                                                    f"Invalid value: {replicas}: must be greater than or equal to 0")])
        rv = (scale.get("metadata") or {}).get("resourceVersion", "")
        body = {"spec": {"replicas": replicas}}
        if rv:
            body["metadata"] = {"resourceVersion": rv}
        stored = await self.registry.patch(t.res, t.namespace, t.name, json.dumps(body),
                                           manager=apply.manager(req, t), dry_run=_dry_run(req))
        return json_response(self._scale_of(stored))


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}


def _flag(value: str) -> bool:
    """A boolean query parameter as Go's strconv.ParseBool reads it (clients send
    "true", "1", and the Python client "True")."""
    return value in _TRUE


def _invalid_list_options(field: str, detail: str) -> ApiError:
    return errors.invalid("ListOptions.meta.k8s.io", "", [(field, "FieldValueForbidden", f"Forbidden: {detail}")])


def _parse_body(req: Request):
    kind = req.headers.get("content-type", "application/json").split(";")[0].strip()
    if kind in ("application/json", ""):
        try:
            return json.loads(req.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise errors.bad_request(f"couldn't get version/kind; json parse error: {e}") from None
        except RecursionError:
            raise errors.bad_request("couldn't get version/kind; json parse error: exceeded max depth") from None
    if kind == protobuf.CONTENT_TYPE:
        return protobuf.decode(req.body)
    if kind in ("application/yaml", "application/x-yaml", "text/yaml"):
        try:
            return yaml.safe_load(req.body)
        except yaml.YAMLError as e:
            raise errors.bad_request(f"error converting YAML to JSON: {e}") from None
    raise errors.bad_request(f"the body of the request was in an unknown format - accepted media "
                             f"types include: application/json, application/yaml, {protobuf.CONTENT_TYPE}")


def _delete_options(req: Request) -> dict:
    opts = {}
    if req.body.strip():
        opts = _parse_body(req)
        if not isinstance(opts, dict):
            raise errors.bad_request("DeleteOptions must be a JSON object")
    for name in ("gracePeriodSeconds", "propagationPolicy"):
        if req.param(name):
            opts.setdefault(name, req.param(name))
    if opts.get("orphanDependents") is True and not opts.get("propagationPolicy"):
        opts["propagationPolicy"] = "Orphan"
    grace = opts.get("gracePeriodSeconds")
    if grace is not None:
        try:
            opts["gracePeriodSeconds"] = int(grace)
        except (TypeError, ValueError):
            raise errors.bad_request(f'invalid gracePeriodSeconds: "{grace}"') from None
    return opts


def _dry_run(req: Request, opts: dict | None = None) -> bool:
    values = req.query.get("dryRun", []) + list((opts or {}).get("dryRun") or [])
    for v in values:
        if v != "All":
            raise errors.bad_request(f'Invalid value: "{v}": supported values: "All"')
    return bool(values)


def _with_warnings(resp: Response, warnings: list[str]) -> Response:
    for w in warnings:  # RFC 7234 warn-text: a quoted-string
        text = w.replace("\\", "\\\\").replace('"', '\\"')
        resp.headers.append(("Warning", f'299 - "{text}"'))
    return resp
