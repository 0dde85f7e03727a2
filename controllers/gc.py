"""Garbage collection by ownerReferences, and namespace deletion.

``GarbageCollector`` keeps a graph of who owns whom (the ownerReferences of
every object of the watched resources, by uid) and acts on three kinds of
change, level-based and safe to repeat:

- Background: an object whose owners are all gone is deleted; one whose owners
  are partly gone loses the references to the missing ones. "Gone" is
  decided by uid: an owner not in the graph is looked up live (a namesake
  with another uid counts as gone), and a uid found gone is remembered, as
  uids never come back.
- Foreground: an owner being deleted with the "foregroundDeletion" finalizer
  (Delete with propagationPolicy=Foreground) has its dependents deleted, and
  keeps the finalizer until no dependent with blockOwnerDeletion is left;
  dependents that own others are deleted in the foreground too, so the whole
  tree goes bottom-up.
- Orphan: an owner being deleted with the "orphan" finalizer has the
  references to it removed from its dependents, then loses the finalizer.

Removing the last finalizer lets the apiserver finish the deletion.

``NamespaceController`` empties a namespace being deleted: every namespaced
object inside it (all namespaced resources the apiserver serves) is deleted,
and once nothing is left the namespace's "kubernetes" finalizer is removed
from spec.finalizers, so the apiserver removes the namespace.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from apiserver import resources
from apiserver.errors import ApiError
from controllers.base import Controller
from controllers.informer import deep_copy
from controllers.podutil import owner_refs_patch, remove_finalizer

log = logging.getLogger("controllers.gc")

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
NAMESPACE_FINALIZER = "kubernetes"
DEFAULT_RESOURCES = ("pods", "replicasets", "deployments", "services", "endpoints", "configmaps",
                     "secrets", "leases", "nodes")
ABSENT_CACHE = 10_000  # owner uids confirmed gone, remembered
OWNER, DEPENDENT = "owner", "dependent"


@dataclass
class _Node:
    """One object of the graph, as last seen."""
    resource: str
    obj: object  # the informer's object (shared: never mutated)
    owner_uids: set[str] = field(default_factory=set)

    @property
    def meta(self):
        return self.obj.metadata

    @property
    def being_deleted(self) -> bool:
        return bool(self.obj.metadata.deletion_timestamp)

    def waits_for(self, finalizer: str) -> bool:
        return self.being_deleted and finalizer in self.obj.metadata.finalizers


class GarbageCollector(Controller):
    name = "garbagecollector"

    def __init__(self, client, informers, *, resources: tuple[str, ...] = DEFAULT_RESOURCES,
                 workers: int = 2) -> None:
        """``informers``: a SharedInformerFactory; one informer per resource in
        ``resources`` (cluster-wide) is taken from it."""
        self.client = client
        self._informers = {}
        for name in resources:
            inf = informers.informer(name)
            self._informers[inf.resource] = inf
            inf.add_handler(lambda obj, r=inf.resource: self._upsert(r, obj),
                            lambda old, new, r=inf.resource: self._upsert(r, new),
                            self._removed)
        self._lock = threading.Lock()
        self._graph: dict[str, _Node] = {}
        self._dependents: dict[str, set[str]] = {}  # owner uid -> dependent uids
        self._absent: OrderedDict[str, None] = OrderedDict()
        super().__init__(list(self._informers.values()), workers)

    # ---- the graph ----

    def _upsert(self, resource: str, obj) -> None:
        uid = obj.metadata.uid
        owners = {ref.uid for ref in obj.metadata.owner_references}
        with self._lock:
            node = self._graph.get(uid)
            before = node.owner_uids if node is not None else set()
            self._graph[uid] = _Node(resource, obj, owners)
            for gone in before - owners:
                self._unlink(gone, uid)
            for owner in owners:
                self._dependents.setdefault(owner, set()).add(uid)
            # owners waiting on their dependents look again at any change of one
            waiting = [o for o in before | owners
                       if (n := self._graph.get(o)) is not None and (n.waits_for(FOREGROUND) or n.waits_for(ORPHAN))]
        if owners and (node is None or owners != before):
            self.queue.add((DEPENDENT, uid))
        if obj.metadata.deletion_timestamp and {FOREGROUND, ORPHAN} & set(obj.metadata.finalizers):
            self.queue.add((OWNER, uid))
        for o in waiting:
            self.queue.add((OWNER, o))

    def _removed(self, obj) -> None:
        uid = obj.metadata.uid
        with self._lock:
            node = self._graph.pop(uid, None)
            owners = node.owner_uids if node is not None else set()
            for owner in owners:
                self._unlink(owner, uid)
            dependents = list(self._dependents.get(uid, ()))
            self._remember_absent(uid)
        for dep in dependents:
            self.queue.add((DEPENDENT, dep))
        for owner in owners:
            self.queue.add((OWNER, owner))

    def _unlink(self, owner: str, dependent: str) -> None:
        deps = self._dependents.get(owner)
        if deps is not None:
            deps.discard(dependent)
            if not deps:
                del self._dependents[owner]

    def _remember_absent(self, uid: str) -> None:
        self._absent[uid] = None
        self._absent.move_to_end(uid)
        while len(self._absent) > ABSENT_CACHE:
            self._absent.popitem(last=False)

    def node(self, uid: str) -> _Node | None:
        with self._lock:
            return self._graph.get(uid)

    def dependents(self, uid: str) -> list[_Node]:
        """The objects of the graph that name ``uid`` as an owner."""
        with self._lock:
            return [self._graph[d] for d in self._dependents.get(uid, ()) if d in self._graph]

    # ---- reconciling ----

    def sync(self, key: tuple[str, str]) -> None:
        what, uid = key
        node = self.node(uid)
        if node is None:
            return
        if what == DEPENDENT:
            self._sync_dependent(node)
        else:
            self._sync_owner(node)

    def _owner_exists(self, ref, dependent: _Node) -> bool:
        with self._lock:
            if ref.uid in self._absent:
                return False
            if ref.uid in self._graph:
                return True
        res = resources.BY_KIND.get(ref.kind)
        if res is None:
            return True  # a kind the apiserver does not serve: not ours to judge
        namespace = dependent.meta.namespace if res.namespaced else ""
        try:
            live = self.client.get(res.name, ref.name, namespace)
        except ApiError as e:
            if e.reason != "NotFound":
                raise
            live = None
        if live is None or live.metadata.uid != ref.uid:
            with self._lock:
                self._remember_absent(ref.uid)
            return False
        return True

    def _sync_dependent(self, node: _Node) -> None:
        if node.being_deleted:
            return
        refs = list(node.meta.owner_references)
        present = [ref for ref in refs if self._owner_exists(ref, node)]
        if len(present) == len(refs):
            return
        meta = node.meta
        if not present:
            log.info("deleting %s %s/%s: its owners are gone", node.resource, meta.namespace, meta.name)
            self._delete(node, "Background")
            return
        log.info("%s %s/%s: dropping references to owners that are gone", node.resource,
                 meta.namespace, meta.name)
        self._set_owner_refs(node, present)

    def _sync_owner(self, node: _Node) -> None:
        if node.waits_for(ORPHAN):
            # orphaning first: whatever else the owner waits for, its dependents stay
            for dep in self.dependents(node.meta.uid):
                self._set_owner_refs(dep, [r for r in dep.meta.owner_references if r.uid != node.meta.uid])
            self._remove_finalizer(node, ORPHAN)
            return
        if not node.waits_for(FOREGROUND):
            return
        blocking = 0
        for dep in self.dependents(node.meta.uid):
            ref = next((r for r in dep.meta.owner_references if r.uid == node.meta.uid), None)
            if ref is None:
                continue
            if not dep.being_deleted:
                # a dependent that owns others goes foreground too: the tree goes bottom-up
                policy = "Foreground" if self.dependents(dep.meta.uid) else "Background"
                self._delete(dep, policy)
            if ref.HasField("block_owner_deletion") and ref.block_owner_deletion:
                blocking += 1
        if blocking:
            return  # each dependent's deletion brings the owner back here
        self._remove_finalizer(node, FOREGROUND)

    # ---- writes ----

    def _delete(self, node: _Node, policy: str) -> None:
        meta = node.meta
        try:
            self.client.delete(node.resource, meta.name, meta.namespace, uid=meta.uid,
                               propagation_policy=policy)
        except ApiError as e:
            if e.reason not in ("NotFound", "Conflict"):  # gone, or a namesake with another uid
                raise

    def _set_owner_refs(self, node: _Node, refs) -> None:
        meta = node.meta
        try:
            self.client.patch(node.resource, meta.name, owner_refs_patch(node.obj, refs), meta.namespace)
        except ApiError as e:
            if e.reason != "NotFound":
                raise  # Conflict: the cache was behind; retried once it caught up

    def _remove_finalizer(self, node: _Node, finalizer: str) -> None:
        remove_finalizer(self.client, node.obj, finalizer)
        log.info("%s %s/%s: removed finalizer %s", node.resource, node.meta.namespace,
                 node.meta.name, finalizer)


class NamespaceController(Controller):
    name = "namespace"

    def __init__(self, client, informers, *, recheck_interval: float = 0.5, workers: int = 1) -> None:
        """``recheck_interval``: how soon a namespace whose content is still
        going away is looked at again."""
        self.client = client
        self.recheck_interval = recheck_interval
        self.namespaces = informers.informer("namespaces")
        self.namespaces.add_handler(self._changed, lambda old, new: self._changed(new))
        super().__init__([self.namespaces], workers)

    def _changed(self, ns) -> None:
        if ns.metadata.deletion_timestamp:
            self.queue.add(ns.metadata.name)

    def sync(self, name: str) -> None:
        ns = self.namespaces.store.get(name)
        if ns is None or not ns.metadata.deletion_timestamp:
            return
        if NAMESPACE_FINALIZER not in ns.spec.finalizers:
            return
        if self.delete_content(name):
            self.queue.add_after(name, self.recheck_interval)
            return
        updated = deep_copy(ns)
        kept = [f for f in updated.spec.finalizers if f != NAMESPACE_FINALIZER]
        del updated.spec.finalizers[:]
        updated.spec.finalizers.extend(kept)
        try:
            self.client.update(updated)
        except ApiError as e:
            if e.reason != "NotFound":
                raise
        log.info("namespace %s is empty; finalized", name)

    def delete_content(self, namespace: str) -> int:
        """Deletes every object in ``namespace`` not already being deleted;
        returns how many objects were still there (0: empty)."""
        remaining = 0
        for res in resources.RESOURCES:
            if not res.namespaced:
                continue
            for obj in self.client.list_all(res.name, namespace).items:
                remaining += 1
                meta = obj.metadata
                if meta.deletion_timestamp:
                    continue
                try:
                    self.client.delete(res.name, meta.name, namespace, uid=meta.uid,
                                       propagation_policy="Background")
                except ApiError as e:
                    if e.reason not in ("NotFound", "Conflict"):
                        raise
        return remaining
