"""kube-apiserver's MutatingAdmissionWebhook and ValidatingAdmissionWebhook
plugins: the configurations come from their watch caches (as upstream's
informers: a configuration acts once this apiserver has seen it), requests
are matched (``matching``), each matching webhook is called (``client``) with
an AdmissionReview (``review``).

Mutating webhooks run one after another, in the order of their
configurations' names and of the webhooks inside, each seeing the object as
the ones before left it; their JSON patches are applied as they come.
Validating webhooks run at the same time, on the object about to be stored.
A refusal is the error kube-apiserver gives (``admission webhook "NAME" denied
the request: MESSAGE``, with the webhook's code, 403 by default); a webhook
that cannot be called or answers nonsense fails the request
(``failurePolicy: Fail``, 500 ``failed calling webhook``) or is skipped
(``Ignore``). Warnings go to WARNINGS, which the REST front sends as
``Warning`` headers.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging

from apiserver import errors, manifest, resources
from apiserver.admission import client, review
from apiserver.admission.matching import CREATE, DELETE, UPDATE, Hook, Request, compile_hooks, matches, \
    selectors_match
from apiserver.errors import ApiError
from apiserver.rest.convert import to_json
from apiserver.rest.patch import json_patch

__all__ = ["CREATE", "UPDATE", "DELETE", "Request", "Webhooks", "WARNINGS"]

log = logging.getLogger("apiserver.admission")

VALIDATING = resources.BY_NAME["validatingwebhookconfigurations"]
MUTATING = resources.BY_NAME["mutatingwebhookconfigurations"]
# as upstream: webhooks are never asked about their own configurations, so a broken one
# can always be removed
NEVER_ADMITTED = frozenset({VALIDATING.name, MUTATING.name})

# the warnings webhooks gave while the current request was admitted (None: nobody collects them)
WARNINGS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("admission_warnings", default=None)


class Webhooks:
    """The webhooks of this apiserver, from ``caches`` (resource name -> WatchCache).
    ``netns``: a network namespace of the plane (--bind-netns) where Services' endpoints
    (pod addresses) are reachable; without it only a ``url`` webhook can be called.
    ``secured``: requests are authenticated (review.APISERVER_USER)."""

    def __init__(self, caches: dict, *, netns: str = "", secured: bool = False) -> None:
        self.caches = caches
        self.netns = netns
        self.secured = secured  # requests are authenticated: a write without a requester is the apiserver's
        self._compiled: dict[str, tuple[int, tuple[Hook, ...]]] = {}

    # ---- which ----

    def _hooks(self, res: resources.Resource) -> tuple[Hook, ...]:
        cache = self.caches.get(res.name)
        if cache is None:
            return ()
        revision = cache.revision
        hit = self._compiled.get(res.name)
        if hit is not None and hit[0] == revision:
            return hit[1]
        configs, revision = cache.list()
        hooks = tuple(h for config in configs for h in compile_hooks(config, mutating=res is MUTATING))
        self._compiled[res.name] = (revision, hooks)
        return hooks

    def _matching(self, res: resources.Resource, req: Request) -> list[Hook]:
        if req.res.name in NEVER_ADMITTED:
            return []
        return [h for h in self._hooks(res) if matches(h, req)]

    def mutating_for(self, req: Request) -> bool:
        """Whether a mutating webhook's rules match ``req`` (its selectors are not asked)."""
        return bool(self._matching(MUTATING, req))

    def _namespace_labels(self, name: str) -> dict:
        cache = self.caches.get("namespaces")
        ns = cache.get("", name) if cache is not None else None
        return dict(ns.metadata.labels) if ns is not None else {}

    # ---- the two plugins ----

    async def mutate(self, req: Request):
        """The object after every matching mutating webhook (``req.obj`` itself when none
        changed it); raises the ApiError of a refusal or of a failing webhook that may not
        be ignored. On DELETE the webhooks are asked and their patches, having no object
        to apply to, are not applied.

        reinvocationPolicy IfNeeded, as upstream: a webhook of that policy called before
        another webhook changed the object is called once more, after the first round."""
        hooks = self._matching(MUTATING, req)
        if not hooks:
            return req.obj
        called_if_needed: list[int] = []  # IfNeeded webhooks called so far, by position
        again: set[int] = set()
        for i, hook in enumerate(hooks):
            changed = await self._mutate_once(hook, req)
            if changed is None:
                continue
            if changed:
                again.update(called_if_needed)
            if hook.spec.reinvocation_policy == "IfNeeded":
                called_if_needed.append(i)
        for i in sorted(again):
            await self._mutate_once(hooks[i], req)
        return req.obj

    async def _mutate_once(self, hook: Hook, req: Request) -> bool | None:
        """Calls one mutating webhook on ``req.obj`` and applies its patch there; whether it
        changed the object, None when it was not called (its selectors) or was ignored."""
        if not selectors_match(hook, req, self._namespace_labels):
            return None
        result = await self._call(hook, req)
        if result is None:
            return None
        ops = result.get("patch")
        if not ops or req.obj is None:
            return False
        patched = _patched(req.obj, ops, hook.name)
        _check_identity(req, patched)
        changed = patched != req.obj
        req.obj = patched
        return changed

    async def validate(self, req: Request) -> None:
        """Asks every matching validating webhook at once; the first refusal (in the
        webhooks' order) is raised."""
        hooks = [h for h in self._matching(VALIDATING, req)
                 if selectors_match(h, req, self._namespace_labels)]
        if not hooks:
            return
        outcomes = await asyncio.gather(*(self._call(h, req) for h in hooks), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    # ---- one call ----

    async def _call(self, hook: Hook, req: Request) -> dict | None:
        """The webhook's checked response (allowed), None when it failed and may be ignored."""
        from apiserver.auth.gate import REQUESTER

        sent = review.build(req, REQUESTER.get(), secured=self.secured)
        uid = sent["request"]["uid"]
        timeout = hook.timeout
        try:
            url, connect_to, server_name = await self._address(hook, timeout)
            data = await client.post(url, json.dumps(sent, separators=(",", ":")).encode(),
                                     ca_bundle=hook.spec.client_config.ca_bundle, timeout=timeout,
                                     connect_to=connect_to, server_name=server_name,
                                     netns=self.netns if connect_to else "")
            result = review.parse(data, uid, mutating=hook.mutating)
        except client.CallError as e:
            return self._failed(hook, f"failed to call webhook: {e}")
        except review.InvalidResponse as e:
            return self._failed(hook, f"received invalid webhook response: {e}")
        warnings = WARNINGS.get()
        if warnings is not None:
            warnings.extend(result["warnings"])
        if not result["allowed"]:
            raise _denied(hook.name, result["status"])
        return result

    def _failed(self, hook: Hook, why: str) -> None:
        message = f'failed calling webhook "{hook.name}": {why}'
        if hook.fails_closed:
            raise errors.internal(f"Internal error occurred: {message}")
        log.warning("%s (failurePolicy Ignore: admitted)", message)
        return None

    async def _address(self, hook: Hook, timeout: float) -> tuple[str, tuple[str, int] | None, str]:
        """(the URL posted to, the address to dial instead of its host, the name the
        certificate must carry); raises client.CallError."""
        cc = hook.spec.client_config
        path_timeout = f"timeout={int(timeout)}s"
        if cc.HasField("url"):
            return f"{cc.url}?{path_timeout}", None, ""
        svc_ref = cc.service
        port = svc_ref.port if svc_ref.HasField("port") else 443
        host = f"{svc_ref.name}.{svc_ref.namespace}.svc"
        url = f"https://{host}:{port}{svc_ref.path if svc_ref.HasField('path') else ''}?{path_timeout}"
        address, target_port = self._service_endpoint(svc_ref.namespace, svc_ref.name, port, url)
        if not self.netns:
            raise client.CallError(f'Post "{url}": dial tcp {address}:{target_port}: a Service\'s endpoints '
                                   "are reachable only with --bind-netns (the plane's network namespace)")
        return url, (address, target_port), host

    def _service_endpoint(self, namespace: str, name: str, port: int, url: str) -> tuple[str, int]:
        """A ready endpoint (address, port) of the Service's ``port`` (as upstream's
        service resolver with endpoint routing, from the Endpoints)."""
        services, endpoints = self.caches.get("services"), self.caches.get("endpoints")
        svc = services.get(namespace, name) if services is not None else None
        if svc is None:
            raise client.CallError(f'Post "{url}": service "{name}" not found')
        svc_port = next((p for p in svc.spec.ports if p.port == port), None)
        if svc_port is None:
            raise client.CallError(f'Post "{url}": no service port {port} found for service "{name}"')
        eps = endpoints.get(namespace, name) if endpoints is not None else None
        for subset in (eps.subsets if eps is not None else ()):
            ep_port = next((p.port for p in subset.ports if p.name == svc_port.name), None)
            if ep_port is not None and subset.addresses:
                return subset.addresses[0].ip, ep_port
        raise client.CallError(f'Post "{url}": no endpoints available for service "{name}"')


def _denied(name: str, status: dict) -> ApiError:
    """upstream's webhookerrors.ToStatusErr."""
    code = status.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) and code >= 400 else 403
    message, reason = status.get("message"), status.get("reason")
    denied = f'admission webhook "{name}" denied the request'
    if isinstance(message, str) and message:
        text = f"{denied}: {message}"
    elif isinstance(reason, str) and reason:
        text = f"{denied}: {reason}"
    else:
        text = f"{denied} without explanation"
    return ApiError(reason if isinstance(reason, str) else "", text, code=code)


def _check_identity(req: Request, obj) -> None:
    """A patch may not move the object: upstream's checks of the object against the request."""
    meta = obj.metadata
    if req.res.namespaced and meta.namespace != req.namespace:
        raise errors.bad_request("the namespace of the provided object does not match the namespace sent on "
                                 "the request")
    if req.operation == UPDATE and meta.name != req.name:
        raise errors.bad_request(f"the name of the object ({meta.name}) does not match the name on the URL "
                                 f"({req.name})")


def _patched(obj, ops: list, hook_name: str):
    """``obj`` with a webhook's JSON patch applied; the result decoded as a request body is
    (fields this apiserver does not know dropped). A patch that does not apply, or changes
    the kind, is an internal error, whatever the failure policy (as upstream)."""
    doc = to_json(obj)
    try:
        patched = json_patch(doc, ops)
    except ApiError as e:
        raise errors.internal(f"Internal error occurred: {e.message}") from None
    if not isinstance(patched, dict) or (patched.get("apiVersion"), patched.get("kind")) != (
            doc["apiVersion"], doc["kind"]):
        raise errors.internal(f'Internal error occurred: admission webhook "{hook_name}" changed the '
                              "object's apiVersion or kind")
    try:
        return manifest.from_dict(patched, unknown_fields=[])
    except ApiError as e:
        raise errors.internal(f"Internal error occurred: {e.message}") from None

