"""What the apiserver does to an object between the request and etcd.

The REST "strategies" of kube-apiserver, for every kind at once: the server
sets uid, creationTimestamp and generation; defaults and validation come from
``validation``; the status subresource is the only way to change status;
deletion honours finalizers (deletionTimestamp first, removal once the last
finalizer is gone) and graceful pod deletion; objects go only into namespaces
that exist and are not terminating. Storage does the optimistic concurrency
(Txn on mod_revision); the watch caches serve Watch. Admission webhooks
(apiserver/admission/) see every write: the mutating ones before validation,
the validating ones just before the write (inside the read-modify-write of an
update or delete, so a retried one is admitted again, as upstream's).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from apiserver import defaults, errors, fieldmanager, manifest, resources, validation
from apiserver.admission.webhooks import CREATE, DELETE, UPDATE, Request, Webhooks
from apiserver.auth.node import references
from apiserver.auth.noderestriction import MIRROR_ANNOTATION
from apiserver.errors import ApiError
from apiserver.fieldmanager import Manager
from apiserver.limits import check_request_size
from apiserver.pb import core_pb2
from apiserver.resources import Resource
from apiserver.selectors import make_predicate
from apiserver.service_alloc import ALLOCATION_ATTEMPTS, Plan, ServiceAllocator
from apiserver.storage import ClaimTaken, Storage

log = logging.getLogger("apiserver.registry")

NAMESPACES = resources.BY_NAME["namespaces"]
PODS = resources.BY_NAME["pods"]
SERVICE_ACCOUNTS = resources.BY_NAME["serviceaccounts"]
SA_DEFAULT_ATTEMPTS = 10  # reads of a missing `default` account before a pod naming it is refused
SERVICE_ACCOUNT_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
API_ACCESS_PREFIX = "kube-api-access-"
# upstream's: an hour and 7 s, so that a token's age tells the kubelet's refresh apart
API_ACCESS_TOKEN_SECONDS = 3607
SERVICES = resources.BY_NAME["services"]
CSRS = resources.BY_NAME["certificatesigningrequests"]

# created at startup, as kube-apiserver's system namespaces controller does
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", resources.NAMESPACE_NODE_LEASE)

# etcd refuses requests over 1.5 MiB; stay clear of it with the metadata around
DEFAULT_MAX_OBJECT_BYTES = 1024 * 1024
GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
GENERATE_NAME_ATTEMPTS = 5

# how long after this apiserver starts deleting a namespace its creates check
# the namespace in etcd rather than in the namespaces' watch cache (which may
# not have seen the deletion yet); Kubernetes' NamespaceLifecycle admission
# keeps such a "force live lookup" list for the same reason
LIVE_LOOKUP_SECONDS = 30.0

FOREGROUND_FINALIZER = "foregroundDeletion"
ORPHAN_FINALIZER = "orphan"
PROPAGATION_POLICIES = {"", "Background", "Foreground", "Orphan"}


def now_rfc3339(delta_seconds: float = 0) -> str:
    t = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=delta_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def generated_name(prefix: str) -> str:
    """generateName's name: the prefix and 5 random characters, as Kubernetes."""
    return prefix + "".join(secrets.choice(GENERATE_NAME_ALPHABET) for _ in range(5))


def parse_resource_version(rv: str, what: str = "resourceVersion") -> int | None:
    """"" -> None; "N" -> N; anything else is a BadRequest."""
    if rv == "":
        return None
    if not rv.isdigit():
        raise errors.bad_request(f'invalid {what}: "{rv}"')
    return int(rv)


@dataclass
class Options:
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    not_ready_toleration_seconds: int = 300
    unreachable_toleration_seconds: int = 300
    # the ServiceAccount admission plugin's token volume: only when the apiserver signs tokens
    service_account_tokens: bool = False
    # where admission webhooks named by a Service are dialled (--bind-netns; "": not reachable)
    webhook_netns: str = ""
    # requests are authenticated: a write that no request made is the apiserver's own (admission's userInfo)
    secured: bool = False


def copy_of(msg):
    new = type(msg)()
    new.CopyFrom(msg)
    return new


def _spec_of(res: Resource, msg):
    """What a change of bumps metadata.generation."""
    if not res.has_spec:
        return None
    return msg.spec.SerializeToString(deterministic=True)


def _deletion_done(res: Resource, msg) -> bool:
    """An object being deleted goes once nothing holds it any more."""
    if not msg.metadata.deletion_timestamp or msg.metadata.finalizers:
        return False
    if res is NAMESPACES and msg.spec.finalizers:
        return False
    # a graceful pod deletion ends when the kubelet deletes it with grace 0
    return not (res is PODS and msg.metadata.deletion_grace_period_seconds > 0)


class Registry:
    """Create/get/list/update/patch/delete/watch of every kind; raises ApiError."""

    def __init__(self, storage: Storage, caches: dict, options: Options | None = None,
                 allocator: ServiceAllocator | None = None) -> None:
        self.storage = storage
        self.caches = caches  # resource name -> WatchCache
        self.options = options or Options()
        # ClusterIPs and NodePorts; without one, Services are stored as given
        self.allocator = allocator
        self._live_lookup: dict[str, float] = {}  # namespace -> until (monotonic), see LIVE_LOOKUP_SECONDS
        # dynamic admission (apiserver/admission/), configured by the objects it watches
        self.webhooks = Webhooks(caches, netns=self.options.webhook_netns, secured=self.options.secured)

    # ---- helpers --------------------------------------------------------

    def _defaults(self, res: Resource, msg, *, for_create: bool) -> None:
        defaults.apply_defaults(
            res, msg, for_create=for_create,
            not_ready_toleration_seconds=self.options.not_ready_toleration_seconds,
            unreachable_toleration_seconds=self.options.unreachable_toleration_seconds)

    async def _admit_service_account(self, pod) -> None:
        """upstream's ServiceAccount admission plugin on a new pod: it runs as ``default`` unless it
        names an account, and unless the pod or its account says automountServiceAccountToken:
        false, every container gets the account's token, the cluster's CA and the namespace in a
        projected volume (kube-api-access-xxxxx) at /var/run/secrets/kubernetes.io/serviceaccount.
        A pod naming an account that does not exist is refused (Forbidden, upstream's message)."""
        spec = pod.spec
        spec.service_account_name = spec.service_account_name or "default"
        # upstream's NamespaceLifecycle admission runs first: a missing namespace is NotFound
        await self._check_namespace_open(PODS, pod.metadata.namespace, pod.metadata.name)
        sa = await self._service_account_for(pod)
        if spec.HasField("automount_service_account_token"):
            if not spec.automount_service_account_token:
                return
        elif sa.HasField("automount_service_account_token") and not sa.automount_service_account_token:
            return
        containers = (*spec.init_containers, *spec.containers)
        if any(m.mount_path == SERVICE_ACCOUNT_MOUNT_PATH for c in containers for m in c.volume_mounts):
            return
        names = {v.name for v in spec.volumes}
        name = generated_name(API_ACCESS_PREFIX)
        while name in names:
            name = generated_name(API_ACCESS_PREFIX)
        volume = spec.volumes.add(name=name)
        projected = volume.projected
        projected.default_mode = defaults.DEFAULT_VOLUME_FILE_MODE
        projected.sources.add().service_account_token.CopyFrom(core_pb2.ServiceAccountTokenProjection(
            expiration_seconds=API_ACCESS_TOKEN_SECONDS, path="token"))
        projected.sources.add().config_map.CopyFrom(core_pb2.ConfigMapProjection(
            name="kube-root-ca.crt", items=[core_pb2.KeyToPath(key="ca.crt", path="ca.crt")]))
        projected.sources.add().downward_api.items.add(
            path="namespace", field_ref=core_pb2.ObjectFieldSelector(api_version="v1",
                                                                     field_path="metadata.namespace"))
        for c in containers:
            c.volume_mounts.add(name=name, read_only=True, mount_path=SERVICE_ACCOUNT_MOUNT_PATH)

    async def _service_account_for(self, pod):
        """The account a pod runs as, from the watch cache or else etcd; ``default`` is looked for
        a few times (upstream: 10 tries 100-200 ms apart), since the ServiceAccount controller
        makes it just after its namespace."""
        namespace, name = pod.metadata.namespace, pod.spec.service_account_name
        cache = self.caches.get(SERVICE_ACCOUNTS.name)
        cached = cache.get(namespace, name) if cache is not None else None
        if cached is not None:
            return cached
        for attempt in range(SA_DEFAULT_ATTEMPTS if name == "default" else 1):
            if attempt:
                await asyncio.sleep(0.1 + 0.1 * secrets.randbelow(1000) / 1000)
            try:
                return await self.storage.get(SERVICE_ACCOUNTS, namespace, name)
            except ApiError as e:
                if e.reason != "NotFound":
                    raise
        raise errors.forbidden("pods", pod.metadata.name,
                               f'error looking up service account {namespace}/{name}: serviceaccount "{name}" not found')

    def _check_size(self, res: Resource, msg) -> None:
        size = msg.ByteSize()
        if size > self.options.max_object_bytes:
            raise errors.too_large(
                f'{res.kind} "{msg.metadata.name}" is too large: {size} bytes, '
                f"the limit is {self.options.max_object_bytes}")

    @staticmethod
    def namespace_of(res: Resource, namespace: str) -> str:
        if not res.namespaced:
            return ""
        return namespace or "default"

    async def _check_namespace_open(self, res: Resource, namespace: str, name: str) -> None:
        if not res.namespaced:
            return
        # the namespaces' watch cache answers almost always (as kube's
        # NamespaceLifecycle admission uses its informer); a namespace it
        # has not seen yet is read from etcd
        ns = self.caches[NAMESPACES.name].get("", namespace) if NAMESPACES.name in self.caches else None
        if ns is not None and not ns.metadata.deletion_timestamp and not self._deleted_lately(namespace):
            return
        try:
            ns = await self.storage.get(NAMESPACES, "", namespace)
        except ApiError as e:
            if e.reason == "NotFound":
                raise errors.not_found("namespaces", namespace) from None
            raise
        if ns.metadata.deletion_timestamp:
            raise errors.forbidden(
                res.qualified, name,
                f"unable to create new content in namespace {namespace} because it is being terminated")

    def _deleted_lately(self, namespace: str) -> bool:
        until = self._live_lookup.get(namespace)
        if until is None:
            return False
        if until < time.monotonic():
            del self._live_lookup[namespace]
            return False
        return True

    def _deleting_namespace(self, name: str) -> None:
        now = time.monotonic()
        for ns in [ns for ns, until in self._live_lookup.items() if until < now]:
            del self._live_lookup[ns]
        self._live_lookup[name] = now + LIVE_LOOKUP_SECONDS

    # ---- create ---------------------------------------------------------

    async def create(self, res: Resource, incoming, *, manager: Manager | None = None,
                     dry_run: bool = False):
        """``manager``: who creates, recorded in managedFields (none: they are
        stored as given). ``dry_run``: everything but the write."""
        check_request_size(incoming.ByteSize())
        msg = copy_of(incoming)
        if res.namespaced:
            msg.metadata.namespace = msg.metadata.namespace or "default"
        self._reset_for_create(res, msg)
        self._defaults(res, msg, for_create=True)
        admission = Request(CREATE, res, "", msg.metadata.namespace, msg.metadata.name, msg, None, dry_run,
                            _options(manager))
        mutated = await self.webhooks.mutate(admission)
        if mutated is not msg:
            msg = mutated
            check_request_size(msg.ByteSize())
            self._reset_for_create(res, msg)
            self._defaults(res, msg, for_create=True)
        meta = msg.metadata
        # as upstream's BeforeCreate, after mutating admission: webhooks see none of these
        meta.uid = str(uuid.uuid4())
        meta.creation_timestamp = now_rfc3339()
        meta.generation = 1
        generated = not meta.name and bool(meta.generate_name)
        if generated:
            meta.name = generated_name(meta.generate_name)
        if manager is not None:
            fieldmanager.track_update(res, None, msg, manager)
        self._check_size(res, msg)  # before validation walks it
        allocating = res is SERVICES and self.allocator is not None
        if allocating:
            self.allocator.prepare_create(msg)
        restriction, user = _node_restriction()
        if restriction is not None:
            restriction.admit_create(user, res.name, msg)
        if res is PODS and self.options.service_account_tokens:
            if _is_mirror(msg):
                _check_mirror_pod(msg)
            else:
                await self._admit_service_account(msg)
        if res is CSRS:
            _csr_requester(msg)
        validation.validate_create(res, msg)
        await self._check_namespace_open(res, meta.namespace, meta.name)
        admission.obj = msg  # the name stays the request's (empty with generateName), as upstream's
        await self.webhooks.validate(admission)
        for attempt in range(GENERATE_NAME_ATTEMPTS if generated else 1):
            try:
                if allocating:
                    return await self._create_service(msg, dry_run=dry_run)
                return await self.storage.create(res, msg, dry_run=dry_run)
            except ApiError as e:
                if e.reason != "AlreadyExists" or not generated or attempt == GENERATE_NAME_ATTEMPTS - 1:
                    raise
                meta.name = generated_name(meta.generate_name)

    @staticmethod
    def _reset_for_create(res: Resource, msg) -> None:
        """What a create may not choose: no resourceVersion, uid or deletion; status reset
        (the status subresource writes it)."""
        meta = msg.metadata
        meta.uid = ""
        meta.creation_timestamp = ""
        meta.resource_version = ""
        meta.deletion_timestamp = ""
        meta.ClearField("deletion_grace_period_seconds")
        if res.has_status and res.name != "nodes":  # kubelets register nodes with their status
            msg.ClearField("status")
            if res is PODS:
                msg.status.phase = "Pending"

    async def _admitted_update(self, res: Resource, new, current, *, dry_run: bool, status: bool = False,
                               approval: bool = False, manager: Manager | None = None, managed=None):
        """_prepare_update between the admission webhooks: the mutating ones on the object
        as the client sent it (defaulted), the validating ones on what is to be stored."""
        sub = ("approval" if approval else "status") if status else ""
        admission = Request(UPDATE, res, sub, current.metadata.namespace, current.metadata.name, new, current,
                            dry_run, _options(manager))
        if self.webhooks.mutating_for(admission):
            self._defaults(res, new, for_create=False)
            new = await self.webhooks.mutate(admission)
        prepared = self._prepare_update(res, new, current, status=status, manager=manager, managed=managed,
                                        approval=approval)
        admission.obj = prepared if prepared is not None else new
        await self.webhooks.validate(admission)
        return prepared

    async def _create_service(self, msg, *, dry_run: bool = False):
        """Stores a Service with its ClusterIP and NodePorts, all in one Txn.
        A value picked at random that another create took meanwhile is
        picked again; one the user asked for is Invalid."""
        avoid: set[bytes] = set()
        for _ in range(ALLOCATION_ATTEMPTS):
            svc = copy_of(msg)
            plan = await self.allocator.plan_create(svc, avoid)
            validation.validate_create(SERVICES, svc)
            try:
                return await self.storage.create(SERVICES, svc, claims=plan.claims, dry_run=dry_run)
            except ClaimTaken as e:
                plan.raise_if_requested(svc.metadata.name, e.keys)
                avoid |= e.keys
        raise errors.internal(f"failed to allocate the addresses of service {msg.metadata.name} "
                              f"after {ALLOCATION_ATTEMPTS} attempts: the ranges are nearly full; retry")

    async def _guaranteed_update(self, res: Resource, namespace: str, name: str, update_fn, *,
                                 expected_revision: int | None = None, allocate: bool = True,
                                 dry_run: bool = False):
        """storage.guaranteed_update, for Services with their allocations
        taken and freed in the same Txn (``allocate``: the spec may change)."""
        if res is not SERVICES or self.allocator is None or not allocate:
            return await self.storage.guaranteed_update(res, namespace, name, update_fn,
                                                        expected_revision=expected_revision,
                                                        dry_run=dry_run)
        avoid: set[bytes] = set()
        plans: list[Plan] = []

        async def claims_fn(current, new):
            if new is None:
                plan = await self.allocator.plan_delete(current)
            else:
                plan = await self.allocator.plan_update(new, current, avoid)
            plans.append(plan)
            return plan.claims

        for _ in range(ALLOCATION_ATTEMPTS):
            try:
                return await self.storage.guaranteed_update(res, namespace, name, update_fn,
                                                            expected_revision=expected_revision,
                                                            claims_fn=claims_fn, dry_run=dry_run)
            except ClaimTaken as e:
                plans[-1].raise_if_requested(name, e.keys)
                avoid |= e.keys
        raise errors.internal(f"failed to allocate the addresses of service {name} "
                              f"after {ALLOCATION_ATTEMPTS} attempts: the ranges are nearly full; retry")

    async def ensure_system_namespaces(self) -> None:
        for name in SYSTEM_NAMESPACES:
            ns = NAMESPACES.new()
            ns.metadata.name = name
            try:
                await self.create(NAMESPACES, ns)
            except ApiError as e:
                if e.reason != "AlreadyExists":
                    raise

    # ---- read -----------------------------------------------------------

    async def get(self, res: Resource, namespace: str, name: str):
        if not name:
            raise errors.bad_request("name is required")
        return await self.storage.get(res, self.namespace_of(res, namespace), name)

    async def list(self, res: Resource, namespace: str = "", *, label_selector: str = "",
                   field_selector: str = "", limit: int = 0, continue_token: str = "",
                   resource_version: str = ""):
        predicate = make_predicate(res, label_selector, field_selector)
        revision = parse_resource_version(resource_version) or 0
        if limit < 0:
            raise errors.bad_request("limit must not be negative")
        return await self.storage.list(
            res, namespace if res.namespaced else "",
            predicate=None if predicate.everything else predicate.matches,
            limit=limit, continue_token=continue_token, revision=revision)

    def watch(self, res: Resource, namespace: str = "", *, label_selector: str = "",
              field_selector: str = "", resource_version: str = "", bookmarks: bool = False):
        """The cache's async iterator of (type, object); Expired when too old."""
        predicate = make_predicate(res, label_selector, field_selector)
        rv = parse_resource_version(resource_version)
        return self.caches[res.name].watch(
            namespace=namespace if res.namespaced else "",
            predicate=None if predicate.everything else predicate.matches,
            resource_version=rv or None, bookmarks=bookmarks)

    # ---- update ---------------------------------------------------------

    def _prepare_update(self, res: Resource, new, current, *, status: bool,
                        manager: Manager | None = None, managed=None, approval: bool = False):
        """The object to store for an update of ``current`` to ``new``;
        None when the update completes a deletion. managedFields: ``managed``
        (an apply's) if given, else updated for ``manager``, else as sent
        (the stored ones when none are sent)."""
        meta, cur = new.metadata, current.metadata
        if not status and managed is None and not meta.managed_fields:
            meta.managed_fields.extend(cur.managed_fields)
        if status:
            # the status subresource changes status only
            incoming_status = new.status
            new = copy_of(current)
            new.status.CopyFrom(incoming_status)
            meta = new.metadata
            if res is CSRS:
                _csr_subresource(new, current, "approval" if approval else "status")
        elif res is CSRS:
            # as upstream's strategy: an update of the object changes its metadata only
            new.spec.CopyFrom(current.spec)
            new.status.CopyFrom(current.status)
            for field in ("uid", "creation_timestamp"):
                if not getattr(meta, field):
                    setattr(meta, field, getattr(cur, field))
            validation.validate_update(res, new, current)
        else:
            # immutable system fields: filled in when the client left them out,
            # validation rejects a change
            for field in ("uid", "creation_timestamp"):
                if not getattr(meta, field):
                    setattr(meta, field, getattr(cur, field))
            if res.has_status:
                if current.HasField("status"):
                    new.status.CopyFrom(current.status)
                else:
                    new.ClearField("status")
            self._defaults(res, new, for_create=False)
            self._check_size(res, new)  # before validation walks it
            if res is SERVICES and self.allocator is not None:
                self.allocator.prepare_update(new, current)
            validation.validate_update(res, new, current)
        restriction, user = _node_restriction()
        if restriction is not None:
            restriction.admit_update(user, res.name, ("approval" if approval else "status") if status else "",
                                     new, current)
        meta.resource_version = cur.resource_version
        meta.deletion_timestamp = cur.deletion_timestamp
        if cur.HasField("deletion_grace_period_seconds"):
            meta.deletion_grace_period_seconds = cur.deletion_grace_period_seconds
        else:
            meta.ClearField("deletion_grace_period_seconds")
        if cur.deletion_timestamp:
            added = set(meta.finalizers) - set(cur.finalizers)
            if added:
                raise errors.forbidden(res.qualified, cur.name,
                                       f"no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)}")
        meta.generation = cur.generation
        if not status and _spec_of(res, new) != _spec_of(res, current):
            meta.generation = cur.generation + 1
        if _deletion_done(res, new):
            return None
        if managed is not None:
            del meta.managed_fields[:]
            meta.managed_fields.extend(managed)
        elif manager is not None:
            fieldmanager.track_update(res, current, new, manager)
        if new == current:
            return current  # nothing changed: no write, the resourceVersion stays
        self._check_size(res, new)
        return new

    async def _update(self, res: Resource, incoming, *, status: bool, manager: Manager | None,
                      dry_run: bool, approval: bool = False):
        if status and not res.has_status:
            raise errors.method_not_allowed(f"{res.name} have no status subresource")
        check_request_size(incoming.ByteSize())
        namespace = self.namespace_of(res, incoming.metadata.namespace)
        name = incoming.metadata.name
        if not name:
            raise errors.invalid(res.kind, "", [("metadata.name", "FieldValueRequired", "Required value")])
        expected = parse_resource_version(incoming.metadata.resource_version)
        wanted = copy_of(incoming)
        wanted.metadata.namespace = namespace

        def update(current):
            return self._admitted_update(res, copy_of(wanted), current, status=status, manager=manager,
                                         approval=approval, dry_run=dry_run)

        return await self._guaranteed_update(res, namespace, name, update, expected_revision=expected,
                                             allocate=not status, dry_run=dry_run)

    async def update(self, res: Resource, incoming, *, manager: Manager | None = None,
                     dry_run: bool = False):
        return await self._update(res, incoming, status=False, manager=manager, dry_run=dry_run)

    async def update_status(self, res: Resource, incoming, *, manager: Manager | None = None,
                            dry_run: bool = False):
        return await self._update(res, incoming, status=True, manager=manager, dry_run=dry_run)

    async def update_approval(self, res: Resource, incoming, *, manager: Manager | None = None,
                              dry_run: bool = False):
        """certificatesigningrequests/approval: only the Approved and Denied conditions change."""
        if res is not CSRS:
            raise errors.method_not_allowed(f"{res.name} have no approval subresource")
        return await self._update(res, incoming, status=True, manager=manager, dry_run=dry_run, approval=True)

    async def apply(self, res: Resource, namespace: str, name: str, config: dict, manager: Manager, *,
                    force: bool = False, status: bool = False, dry_run: bool = False):
        """Server-side apply of ``config`` (the applied object's JSON, checked
        by the caller) by ``manager`` (fieldmanager.apply); creates the object
        when it does not exist (not through the status subresource). Returns
        (the object, whether it was created)."""
        if status and not res.has_status:
            raise errors.method_not_allowed(f"{res.name} have no status subresource")
        namespace = self.namespace_of(res, namespace)

        def applied(current):
            new = fieldmanager.apply(res, current, config, manager, force=force)
            new.metadata.namespace, new.metadata.name = namespace, name
            return new

        def update(current):
            new = applied(current)
            managed = [copy_of(e) for e in new.metadata.managed_fields]
            return self._admitted_update(res, new, current, status=status, managed=managed, dry_run=dry_run)

        while True:
            try:
                return await self._guaranteed_update(res, namespace, name, update, allocate=not status,
                                                     dry_run=dry_run), False
            except ApiError as e:
                if e.reason != "NotFound" or status:
                    raise
            try:
                return await self.create(res, applied(None), dry_run=dry_run), True
            except ApiError as e:
                if e.reason != "AlreadyExists":
                    raise

    async def patch(self, res: Resource, namespace: str, name: str, merge_patch: str, *,
                    status: bool = False, manager: Manager | None = None, dry_run: bool = False):
        if status and not res.has_status:
            raise errors.method_not_allowed(f"{res.name} have no status subresource")
        namespace = self.namespace_of(res, namespace)
        patch = manifest.parse_merge_patch(merge_patch)  # once, before etcd is read

        def update(current):
            new = manifest.apply_merge_patch(current, patch)
            rv = new.metadata.resource_version
            if rv and rv != current.metadata.resource_version:
                raise errors.conflict(res.qualified, name)
            new.metadata.namespace = namespace
            new.metadata.name = name
            return self._admitted_update(res, new, current, status=status, manager=manager, dry_run=dry_run)

        return await self._guaranteed_update(res, namespace, name, update, allocate=not status,
                                             dry_run=dry_run)

    async def bind(self, namespace: str, name: str, node: str, annotations: dict[str, str], *,
                   dry_run: bool = False):
        """pods/binding, as kube-apiserver's BindingREST: the pod assigned to ``node`` once
        (Conflict when it is assigned already or being deleted), the Binding's annotations
        added, its PodScheduled condition made True."""
        namespace = self.namespace_of(PODS, namespace)

        def assign(current):
            if current.metadata.deletion_timestamp:
                raise errors.conflict("pods/binding", name, f"pod {name} is being deleted, cannot be assigned to a host")
            if current.spec.node_name:
                raise errors.conflict("pods/binding", name,
                                      f'pod {name} is already assigned to node "{current.spec.node_name}"')
            new = copy_of(current)
            new.spec.node_name = node
            new.metadata.annotations.update(annotations)
            cond = next((c for c in new.status.conditions if c.type == "PodScheduled"), None)
            if cond is None:
                cond = new.status.conditions.add(type="PodScheduled")
            if cond.status != "True":
                cond.status, cond.last_transition_time = "True", now_rfc3339()
                cond.reason = cond.message = ""
            return new

        return await self._guaranteed_update(PODS, namespace, name, assign, dry_run=dry_run)

    # ---- delete ---------------------------------------------------------

    async def delete(self, res: Resource, namespace: str, name: str, *, uid: str = "",
                     resource_version: str = "", propagation_policy: str = "",
                     grace_period_seconds: int | None = None, dry_run: bool = False):
        if propagation_policy not in PROPAGATION_POLICIES:
            raise errors.bad_request(f'invalid propagationPolicy "{propagation_policy}": '
                                     "must be Background, Foreground or Orphan")
        if grace_period_seconds is not None and grace_period_seconds < 0:
            grace_period_seconds = 0
        namespace = self.namespace_of(res, namespace)
        expected = parse_resource_version(resource_version)
        options = {k: v for k, v in (("propagationPolicy", propagation_policy),
                                     ("gracePeriodSeconds", grace_period_seconds)) if v not in ("", None)}

        async def update(current):
            meta = current.metadata
            if uid and uid != meta.uid:
                raise errors.conflict(res.qualified, name,
                                      f"Precondition failed: UID in precondition: {uid}, UID in object meta: {meta.uid}")
            if expected is not None and str(expected) != meta.resource_version:
                raise errors.conflict(
                    res.qualified, name,
                    f"Precondition failed: ResourceVersion in precondition: {expected}, "
                    f"ResourceVersion in object meta: {meta.resource_version}")
            admission = Request(DELETE, res, "", namespace, name, None, current, dry_run, dict(options))
            await self.webhooks.mutate(admission)
            await self.webhooks.validate(admission)
            new = copy_of(current)
            finalizers = list(new.metadata.finalizers)
            if propagation_policy == "Foreground" and FOREGROUND_FINALIZER not in finalizers:
                finalizers.append(FOREGROUND_FINALIZER)
            if propagation_policy == "Orphan" and ORPHAN_FINALIZER not in finalizers:
                finalizers.append(ORPHAN_FINALIZER)
            if not meta.deletion_timestamp:
                del new.metadata.finalizers[:]
                new.metadata.finalizers.extend(finalizers)
            grace = 0
            if res is PODS and new.spec.node_name:
                default = new.spec.termination_grace_period_seconds if new.spec.HasField(
                    "termination_grace_period_seconds") else 30
                grace = default if grace_period_seconds is None else grace_period_seconds
                if meta.HasField("deletion_grace_period_seconds"):
                    grace = min(grace, meta.deletion_grace_period_seconds)
            if res is NAMESPACES:
                new.status.phase = "Terminating"
                # before the write: a create that reads the cache after it is answered must not pass
                if not dry_run:
                    self._deleting_namespace(name)
            if not new.metadata.deletion_timestamp:
                new.metadata.deletion_timestamp = now_rfc3339(grace)
            if res is PODS or new.metadata.HasField("deletion_grace_period_seconds"):
                new.metadata.deletion_grace_period_seconds = grace
            if _deletion_done(res, new):
                return None
            return current if new == current else new

        # the uid and resourceVersion preconditions are checked against what
        # was read; the write itself is a CAS on that read
        return await self._guaranteed_update(res, namespace, name, update, dry_run=dry_run)


def _options(manager: Manager | None) -> dict:
    """The CreateOptions/UpdateOptions fields an AdmissionReview shows (dryRun is added there)."""
    return {"fieldManager": manager.name} if manager is not None and manager.name else {}


def _node_restriction():
    """(the gate's NodeRestriction, the requester) while serving a request through a gate
    that has one, else (None, None)."""
    from apiserver.auth.gate import GATE, REQUESTER

    gate, user = GATE.get(), REQUESTER.get()
    if gate is None or user is None or gate.restriction is None:
        return None, None
    return gate.restriction, user


def _is_mirror(pod) -> bool:
    """A kubelet's static pod as the API shows it: upstream's ServiceAccount admission leaves it be."""
    return MIRROR_ANNOTATION in pod.metadata.annotations


def _check_mirror_pod(pod) -> None:
    """upstream's ServiceAccount admission on a mirror pod: it gets no account nor token, and
    may name none, nor Secrets (whoever creates it)."""
    name = pod.metadata.name
    if pod.spec.service_account_name:
        raise errors.forbidden("pods", name, "a mirror pod may not reference service accounts")
    if any(kind == "secrets" for kind, _ in references(pod)):
        raise errors.forbidden("pods", name, "a mirror pod may not reference secrets")
    if any(src.HasField("service_account_token") for v in pod.spec.volumes if v.HasField("projected")
           for src in v.projected.sources):
        raise errors.forbidden("pods", name, "a mirror pod may not use ServiceAccountToken volume projections")


# ---- CertificateSigningRequests -------------------------------------------


def _csr_requester(csr) -> None:
    """spec.username/uid/groups are who created it (what was sent is overwritten), as
    upstream's strategy; with no gate (an open apiserver) what was sent stays."""
    from apiserver.auth.gate import REQUESTER

    user = REQUESTER.get()
    if user is None:
        return
    csr.spec.username, csr.spec.uid = user.name, user.uid
    del csr.spec.groups[:]
    csr.spec.groups.extend(user.groups)


def _csr_subresource(new, current, subresource: str) -> None:
    """``new`` (the current object with the incoming status) as the status or approval
    subresource may leave it: approval keeps the certificate; condition times filled in;
    then validated (only approval may add or change Approved/Denied, only status may set
    the certificate) and, as kube-apiserver's CertificateApproval/CertificateSigning
    admission, the requester must be allowed to approve or sign for the signer."""
    now = now_rfc3339()
    if subresource == "approval":
        new.status.certificate = current.status.certificate
    merged = []
    for c in new.status.conditions:
        c = copy_of(c)
        if not c.status:
            c.status = "True"
        before = next((o for o in current.status.conditions if o.type == c.type), None)
        if not c.last_update_time:
            c.last_update_time = before.last_update_time if before is not None and before == c else now
        if not c.last_transition_time:
            c.last_transition_time = (before.last_transition_time if before is not None
                                      and before.status == c.status and before.last_transition_time else now)
        merged.append(c)
    del new.status.conditions[:]
    new.status.conditions.extend(merged)
    validation.validate_csr_update(new, current, subresource)
    from apiserver.auth.gate import GATE, REQUESTER

    gate, user = GATE.get(), REQUESTER.get()
    if gate is None or user is None:
        return
    # kube-apiserver's CertificateApproval and CertificateSigning admission plugins
    if subresource == "approval":
        gate.check_signer(user, "approve", new.metadata.name, new.spec.signer_name)
    elif new.status.certificate != current.status.certificate:
        gate.check_signer(user, "sign", new.metadata.name, new.spec.signer_name)
