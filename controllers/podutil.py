"""What the workload controllers (ReplicaSet, Deployment) share about the
objects they manage: pod readiness and availability, the order in which
surplus pods go, controller ownerReferences and claiming, the
pod-template-hash, and expectations.

Everything here but ``ControllerRefManager``'s adopt/release is pure: no
client, no clock unless one is passed in.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apiserver import resources
from apiserver.errors import ApiError
from apiserver.pb import core_pb2, meta_pb2

POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
EXPECTATIONS_TTL = 300.0  # seconds an unfulfilled expectation holds a controller back
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # no vowels: no words; valid in names and labels

_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


# ---- time ----

def now_rfc3339(ts: float | None = None) -> str:
    """``ts`` (default: now) as Kubernetes writes times: RFC 3339, UTC, seconds."""
    t = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time; None for "" or nonsense."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


# ---- pod state ----

def get_condition(conditions: Iterable, type_: str):
    """The condition of ``type_`` in any kind's conditions (each kind has its
    own condition message, as upstream), or None."""
    for c in conditions:
        if c.type == type_:
            return c
    return None


def is_pod_ready(pod: core_pb2.Pod) -> bool:
    cond = get_condition(pod.status.conditions, "Ready")
    return cond is not None and cond.status == "True"


def is_pod_active(pod: core_pb2.Pod) -> bool:
    """Counts toward a controller's replicas: not terminating, not finished."""
    return (not pod.metadata.deletion_timestamp
            and pod.status.phase not in ("Succeeded", "Failed"))


def pod_ready_since(pod: core_pb2.Pod) -> float | None:
    """When the pod last became ready (its Ready condition's lastTransitionTime);
    None when it is not ready or the time is unknown."""
    cond = get_condition(pod.status.conditions, "Ready")
    if cond is None or cond.status != "True":
        return None
    return parse_time(cond.last_transition_time)


def is_pod_available(pod: core_pb2.Pod, min_ready_seconds: int, now: float | None = None) -> bool:
    """Ready for at least ``min_ready_seconds`` (at once when 0)."""
    if not is_pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = pod_ready_since(pod)
    if since is None:
        return False
    return since + min_ready_seconds <= (time.time() if now is None else now)


def max_container_restarts(pod: core_pb2.Pod) -> int:
    return max((s.restart_count for s in pod.status.container_statuses), default=0)


def _newer_first(ts: float | None) -> tuple:
    """Sort key: an unknown time first, then the later time first."""
    return (0, 0.0) if ts is None else (1, -ts)


def deletion_rank(pod: core_pb2.Pod) -> tuple:
    """Sort key of Kubernetes' ActivePods order; the lowest goes first when
    scaling down: unassigned before assigned; Pending before Unknown before
    Running; not ready before ready; of two ready pods the more recently
    ready; more container restarts before fewer; newer before older."""
    ready = is_pod_ready(pod)
    return (
        1 if pod.spec.node_name else 0,
        _PHASE_RANK.get(pod.status.phase, 0),
        1 if ready else 0,
        _newer_first(pod_ready_since(pod)) if ready else (0, 0.0),
        -max_container_restarts(pod),
        _newer_first(parse_time(pod.metadata.creation_timestamp)),
        pod.metadata.name,  # a total order, so the choice is deterministic
    )


def pods_to_delete(pods: Iterable[core_pb2.Pod], count: int) -> list[core_pb2.Pod]:
    """The ``count`` pods to remove first."""
    if count <= 0:
        return []
    return sorted(pods, key=deletion_rank)[:count]


# ---- controller references ----

def controller_ref(obj) -> meta_pb2.OwnerReference | None:
    for ref in obj.metadata.owner_references:
        if ref.controller:  # unset reads False
            return ref
    return None


def without_finalizer(obj, finalizer: str):
    """A copy of ``obj`` without ``finalizer`` in metadata.finalizers (the others in order)."""
    updated = type(obj)()
    updated.CopyFrom(obj)
    kept = [f for f in updated.metadata.finalizers if f != finalizer]
    del updated.metadata.finalizers[:]
    updated.metadata.finalizers.extend(kept)
    return updated


def remove_finalizer(client, obj, finalizer: str):
    """Updates ``obj`` without ``finalizer``; the updated object, or None when it is gone.
    A Conflict propagates: the caller's cache was behind, its next sync retries."""
    try:
        return client.update(without_finalizer(obj, finalizer))
    except ApiError as e:
        if e.reason != "NotFound":
            raise
        return None


def new_controller_ref(owner) -> meta_pb2.OwnerReference:
    """The ownerReference a controller puts on what it creates or adopts."""
    res = resources.of(owner)
    return meta_pb2.OwnerReference(api_version=res.api_version, kind=res.kind,
                                   name=owner.metadata.name, uid=owner.metadata.uid,
                                   controller=True, block_owner_deletion=True)


def _ref_json(ref: meta_pb2.OwnerReference) -> dict:
    out = {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name, "uid": ref.uid}
    if ref.HasField("controller"):
        out["controller"] = ref.controller
    if ref.HasField("block_owner_deletion"):
        out["blockOwnerDeletion"] = ref.block_owner_deletion
    return out


def owner_refs_patch(obj, refs: Iterable[meta_pb2.OwnerReference]) -> dict:
    """A merge patch setting ``obj``'s ownerReferences to ``refs``. A merge
    patch replaces a list whole, so it carries obj's uid and resourceVersion as
    preconditions: the patch fails (Invalid / Conflict) rather than overwrite a
    newer list or a namesake object."""
    meta = obj.metadata
    return {"metadata": {"uid": meta.uid, "resourceVersion": meta.resource_version,
                         "ownerReferences": [_ref_json(r) for r in refs]}}


@dataclass
class Claim:
    """How a controller stands to the objects its selector may cover."""
    owned: list = field(default_factory=list)  # controlled by it and matching: keep
    adopt: list = field(default_factory=list)  # orphans that match: take
    release: list = field(default_factory=list)  # controlled by it, no longer matching: let go


def classify(owner, matches: Callable[[dict], bool], candidates: Iterable) -> Claim:
    """Sorts ``candidates`` (objects of ``owner``'s namespace) as Kubernetes'
    ControllerRefManager does. Objects another controller owns are left alone.
    An owner being deleted adopts and releases nothing; an object being
    deleted is neither adopted nor released."""
    claim = Claim()
    owned, adopt, release = claim.owned, claim.adopt, claim.release
    uid = owner.metadata.uid
    owner_deleting = bool(owner.metadata.deletion_timestamp)
    for obj in candidates:
        meta = obj.metadata
        for ref in meta.owner_references:
            if ref.controller:
                if ref.uid != uid:
                    break
                if matches(meta.labels):
                    owned.append(obj)
                elif not owner_deleting and not meta.deletion_timestamp:
                    release.append(obj)
                break
        else:  # an orphan
            if not owner_deleting and not meta.deletion_timestamp and matches(meta.labels):
                adopt.append(obj)
    return claim


class ControllerRefManager:
    """Adopts and releases objects of ``resource`` for ``owner`` through the
    apiserver. ``can_adopt()`` is asked (once) before the first adoption: the
    owner, read fresh, must still exist under the same uid and not be being
    deleted, so a stale cache never adopts for a dead owner."""

    def __init__(self, client, resource: str, owner, matches: Callable[[dict], bool],
                 can_adopt: Callable[[], None]) -> None:
        self.client = client
        self.resource = resource
        self.owner = owner
        self.matches = matches
        self._can_adopt = can_adopt
        self._adopt_checked: ApiError | bool = False

    def claim(self, candidates: Iterable) -> list:
        """The objects ``owner`` controls after adopting and releasing: what it
        owned and still matches plus what it adopted. Raises the first
        adoption or release error other than the object being gone (after
        trying the rest)."""
        c = classify(self.owner, self.matches, candidates)
        claimed = list(c.owned)
        first_error: Exception | None = None
        for obj in c.adopt:
            try:
                claimed.append(self.adopt(obj))
            except ApiError as e:
                if e.reason not in ("NotFound", "Invalid"):
                    first_error = first_error or e
        for obj in c.release:
            try:
                self.release(obj)
            except ApiError as e:
                if e.reason not in ("NotFound", "Invalid"):
                    first_error = first_error or e
        if first_error is not None:
            raise first_error
        return claimed

    def adopt(self, obj):
        if self._adopt_checked is False:
            try:
                self._can_adopt()
                self._adopt_checked = True
            except ApiError as e:
                self._adopt_checked = e
        if isinstance(self._adopt_checked, ApiError):
            raise self._adopt_checked
        refs = [r for r in obj.metadata.owner_references if r.uid != self.owner.metadata.uid]
        refs.append(new_controller_ref(self.owner))
        return self.client.patch(self.resource, obj.metadata.name, owner_refs_patch(obj, refs),
                                 obj.metadata.namespace)

    def release(self, obj):
        refs = [r for r in obj.metadata.owner_references if r.uid != self.owner.metadata.uid]
        return self.client.patch(self.resource, obj.metadata.name, owner_refs_patch(obj, refs),
                                 obj.metadata.namespace)


def fresh_owner_check(client, resource: str, owner) -> Callable[[], None]:
    """A ``can_adopt`` for ControllerRefManager: reads ``owner`` from the
    apiserver; raises ApiError (Conflict) when it is gone, replaced or being
    deleted."""
    def check() -> None:
        meta = owner.metadata
        try:
            fresh = client.get(resource, meta.name, meta.namespace)
        except ApiError as e:
            if e.reason == "NotFound":
                raise ApiError("Conflict", f"{resource} {meta.namespace}/{meta.name} is gone: "
                               "cannot adopt") from None
            raise
        if fresh.metadata.uid != meta.uid:
            raise ApiError("Conflict", f"original {resource} {meta.namespace}/{meta.name} is gone: "
                           f"got uid {fresh.metadata.uid}, wanted {meta.uid}")
        if fresh.metadata.deletion_timestamp:
            raise ApiError("Conflict", f"{resource} {meta.namespace}/{meta.name} is being deleted: "
                           "cannot adopt")
    return check


# ---- pod-template-hash ----

def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(text: str) -> str:
    """Each character mapped into SAFE_ALPHABET, as Kubernetes' SafeEncodeString."""
    return "".join(SAFE_ALPHABET[ord(ch) % len(SAFE_ALPHABET)] for ch in text)


def compute_hash(template: core_pb2.PodTemplateSpec, collision_count: int | None = None) -> str:
    """The pod-template-hash of a template: FNV-32a over its deterministic
    serialization (then the collision count, when there is one), its decimal
    form safe-encoded: at most 10 characters, a valid label value."""
    data = template.SerializeToString(deterministic=True)
    if collision_count is not None:
        data += struct.pack("<I", collision_count & 0xFFFFFFFF)
    return safe_encode(str(fnv32a(data)))


def without_hash(template: core_pb2.PodTemplateSpec) -> core_pb2.PodTemplateSpec:
    t = core_pb2.PodTemplateSpec()
    t.CopyFrom(template)
    t.metadata.labels.pop(POD_TEMPLATE_HASH_LABEL, None)
    return t


def equal_ignore_hash(a: core_pb2.PodTemplateSpec, b: core_pb2.PodTemplateSpec) -> bool:
    """Templates equal but for the pod-template-hash label."""
    return without_hash(a) == without_hash(b)


# ---- expectations ----

@dataclass
class _Expectation:
    adds: int
    deletes: set  # uids whose deletion is awaited
    stamp: float


class ControllerExpectations:
    """What a controller is waiting to see in its cache after acting, per
    controller key: a count of creations and the uids of pods being deleted.
    While any is outstanding the controller must not act on that key again
    (its cache would not show its own recent actions yet). Informer handlers
    lower them as the pods appear and go; an expectation older than ``ttl``
    counts as met, so a lost event delays a controller rather than stalling it.
    A deletion is observed once per uid, however many events report it."""

    def __init__(self, ttl: float = EXPECTATIONS_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, _Expectation] = {}

    def satisfied(self, key: str) -> bool:
        """True when nothing is awaited for ``key`` (or the wait expired)."""
        with self._lock:
            e = self._items.get(key)
            if e is None:
                return True
            return (e.adds <= 0 and not e.deletes) or self.clock() - e.stamp > self.ttl

    def expect(self, key: str, adds: int = 0, delete_uids: Iterable[str] = ()) -> None:
        """Replaces ``key``'s expectations (and restarts its TTL)."""
        with self._lock:
            self._items[key] = _Expectation(max(adds, 0), set(delete_uids), self.clock())

    def creation_observed(self, key: str, count: int = 1) -> None:
        with self._lock:
            e = self._items.get(key)
            if e is not None:
                e.adds -= count

    def deletion_observed(self, key: str, uid: str) -> None:
        with self._lock:
            e = self._items.get(key)
            if e is not None:
                e.deletes.discard(uid)

    def pending(self, key: str) -> tuple[int, int]:
        """(creations, deletions) still awaited for ``key``."""
        with self._lock:
            e = self._items.get(key)
            return (0, 0) if e is None else (max(e.adds, 0), len(e.deletes))

    def delete(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)
