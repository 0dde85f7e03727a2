"""Informers: a local, indexed cache of one resource kept current by list+watch.

An ``Informer`` lists the resource (``Client.list_all``), then watches from the
list's resourceVersion, with bookmarks so its resourceVersion stays recent.
When the stream breaks (apiserver restarted, watch timed out, watcher expired
for falling behind) it watches again from the last resourceVersion it saw;
when that one is Expired it lists again and hands the handlers the difference
between its cache and the new list as adds, updates and deletes. So a handler
misses no change of state, though it may see several changes folded into one
update (level-based: react to the object as it is now).

Contracts a caller relies on:

- Handlers run in the informer's thread, one event at a time, in the order of
  the changes; they should be quick (enqueue a key, note an expectation) and
  must not block on the informer. An exception in a handler is logged.
- When a handler runs, the ``Store`` already holds the new state.
- Objects in the store and given to handlers are SHARED with every other
  reader: never mutate one; ``deep_copy`` it first.
- ``on_delete`` receives the last known state of the object (for a watch
  DELETED event, the object as it was deleted).
- A handler added after the informer has synced first gets ``on_add`` for
  every object already in the cache (in the caller's thread), then every later
  change.
- An informer runs once: ``start()`` after ``stop()`` does nothing.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, Iterable

from apiserver import resources
from apiserver.errors import ApiError

log = logging.getLogger("controllers.informer")

Indexer = Callable[[Any], list]
AddHandler = Callable[[Any], None]
UpdateHandler = Callable[[Any, Any], None]
DeleteHandler = Callable[[Any], None]

# a watch is re-established every 5-10 minutes (as client-go's reflector),
# so a silently dead stream is not trusted forever
WATCH_TIMEOUT_MIN, WATCH_TIMEOUT_MAX = 300.0, 600.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
EXPIRED_REASONS = ("Expired", "Gone")


# ---- keys ----

def meta_namespace_key(obj) -> str:
    """"namespace/name", or "name" for a cluster-scoped object."""
    meta = obj.metadata
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name


def split_meta_namespace_key(key: str) -> tuple[str, str]:
    """(namespace, name) of a key; namespace "" for a cluster-scoped one."""
    namespace, sep, name = key.partition("/")
    return (namespace, name) if sep else ("", namespace)


def deep_copy(obj):
    """A private copy of a cached object, safe to change and send."""
    new = type(obj)()
    new.CopyFrom(obj)
    return new


# ---- built-in indexers ----

def index_by_namespace(obj) -> list[str]:
    return [obj.metadata.namespace] if obj.metadata.namespace else []


def controller_owner_uid(obj) -> str:
    """The uid of the ownerReference with controller=true, or ""."""
    for ref in obj.metadata.owner_references:
        if ref.HasField("controller") and ref.controller:
            return ref.uid
    return ""


def index_by_owner(obj) -> list[str]:
    uid = controller_owner_uid(obj)
    return [uid] if uid else []


def index_by_node(obj) -> list[str]:
    node = getattr(getattr(obj, "spec", None), "node_name", "")
    return [node] if node else []


NAMESPACE_INDEX, OWNER_INDEX, NODE_INDEX = "namespace", "owner", "node"
DEFAULT_INDEXERS: dict[str, Indexer] = {
    NAMESPACE_INDEX: index_by_namespace,
    OWNER_INDEX: index_by_owner,  # the controller's uid
    NODE_INDEX: index_by_node,  # pods' spec.nodeName
}


class Store:
    """A thread-safe map key -> object with secondary indexes.

    An indexer maps an object to the index values it is found under
    (``by_index(name, value)``). Readers get the stored objects themselves:
    copy before changing one."""

    def __init__(self, indexers: dict[str, Indexer] | None = None) -> None:
        self._lock = threading.RLock()
        self._items: dict[str, Any] = {}
        self._indexers: dict[str, Indexer] = {}
        self._indices: dict[str, dict[str, set[str]]] = {}
        for name, fn in (DEFAULT_INDEXERS if indexers is None else indexers).items():
            self.add_indexer(name, fn)

    # ---- reading ----

    def get(self, key: str):
        """The object under ``key``, or None."""
        with self._lock:
            return self._items.get(key)

    def get_by_name(self, namespace: str, name: str):
        return self.get(f"{namespace}/{name}" if namespace else name)

    def list(self) -> list:
        with self._lock:
            return list(self._items.values())

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def by_index(self, index_name: str, value: str) -> list:
        """Objects whose indexer ``index_name`` gives ``value``; KeyError for an unknown index."""
        with self._lock:
            keys = self._index(index_name).get(value, ())
            return [self._items[k] for k in keys]

    def index_keys(self, index_name: str, value: str) -> list[str]:
        with self._lock:
            return list(self._index(index_name).get(value, ()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def _index(self, index_name: str) -> dict[str, set[str]]:
        try:
            return self._indices[index_name]
        except KeyError:
            raise KeyError(f"no index {index_name!r} (have {sorted(self._indices)})") from None

    # ---- indexes ----

    def add_indexer(self, name: str, fn: Indexer) -> None:
        """Registers an index (over the objects already stored too); a name
        already registered is replaced."""
        with self._lock:
            self._indexers[name] = fn
            index: dict[str, set[str]] = {}
            for key, obj in self._items.items():
                for value in fn(obj):
                    index.setdefault(value, set()).add(key)
            self._indices[name] = index

    # ---- writing (the informer's; tests may fill a store directly) ----

    def put(self, obj) -> Any | None:
        """Stores ``obj`` under its key; returns the object it replaced, or None."""
        key = meta_namespace_key(obj)
        with self._lock:
            old = self._items.get(key)
            if old is not None:
                self._unindex(key, old)
            self._items[key] = obj
            for name, fn in self._indexers.items():
                index = self._indices[name]
                for value in fn(obj):
                    index.setdefault(value, set()).add(key)
            return old

    def remove(self, key: str) -> Any | None:
        """Removes and returns the object under ``key`` (None if absent)."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._unindex(key, old)
            return old

    def _unindex(self, key: str, obj) -> None:
        for name, fn in self._indexers.items():
            index = self._indices[name]
            for value in fn(obj):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]


class _Handler:
    __slots__ = ("on_add", "on_update", "on_delete")

    def __init__(self, on_add, on_update, on_delete) -> None:
        self.on_add, self.on_update, self.on_delete = on_add, on_update, on_delete


class Informer:
    def __init__(self, client, resource: str, namespace: str = "", *, label_selector: str = "",
                 field_selector: str = "", resync_period: float = 0) -> None:
        res = resources.lookup(resource)
        if res is None:
            raise ValueError(f"unknown resource {resource!r}")
        self.client = client
        self.resource = res.name
        self.namespace = namespace if res.namespaced else ""
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_period = resync_period
        self.store = Store()
        # held while the store changes and handlers run, so a handler added
        # meanwhile sees each change exactly once
        self._dispatch = threading.RLock()
        self._handlers: list[_Handler] = []
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch_lock = threading.Lock()
        self._watch = None
        self._resource_version = ""
        self._events_this_watch = 0
        self.relists = 0  # lists after the first: how often a watch could not resume

    def __repr__(self) -> str:
        where = f" in {self.namespace!r}" if self.namespace else ""
        return f"<Informer {self.resource}{where} rv={self._resource_version or '-'}>"

    # ---- handlers ----

    def add_handler(self, on_add: AddHandler | None = None, on_update: UpdateHandler | None = None,
                    on_delete: DeleteHandler | None = None) -> None:
        handler = _Handler(on_add, on_update, on_delete)
        with self._dispatch:
            if on_add is not None:
                for obj in self.store.list():
                    _call(on_add, obj)
            self._handlers.append(handler)

    def _added(self, obj) -> None:
        for h in self._handlers:
            if h.on_add is not None:
                _call(h.on_add, obj)

    def _updated(self, old, new) -> None:
        for h in self._handlers:
            if h.on_update is not None:
                _call(h.on_update, old, new)

    def _deleted(self, obj) -> None:
        for h in self._handlers:
            if h.on_delete is not None:
                _call(h.on_delete, obj)

    # ---- lifecycle ----

    def start(self) -> "Informer":
        """Starts the list+watch thread (and the resync thread); idempotent."""
        if self._threads:
            return self
        self._threads.append(threading.Thread(target=self._run, daemon=True,
                                              name=f"informer-{self.resource}"))
        if self.resync_period and self.resync_period > 0:
            self._threads.append(threading.Thread(target=self._resync_loop, daemon=True,
                                                  name=f"informer-{self.resource}-resync"))
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._watch_lock:
            if self._watch is not None:
                self._watch.stop()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def has_synced(self) -> bool:
        """True once the first list is in the store and its adds were handed out."""
        return self._synced.is_set()

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    @property
    def last_resource_version(self) -> str:
        """The resourceVersion the store is current to."""
        return self._resource_version

    # ---- list and watch ----

    def _run(self) -> None:
        delay = BACKOFF_MIN
        must_list = True
        while not self._stop.is_set():
            self._events_this_watch = 0
            try:
                if must_list:
                    self._list()
                    must_list = False
                    delay = BACKOFF_MIN
                self._watch_once()
                if self._events_this_watch:
                    continue  # a live stream ended (its timeout): watch again at once
            except ApiError as e:
                if self._stop.is_set():
                    break
                if e.reason in EXPIRED_REASONS and not must_list:
                    if self._events_this_watch == 0:
                        # the resourceVersion itself is too old: only a list catches up
                        log.info("%r: watch from %s expired (%s); relisting",
                                 self, self._resource_version, e.message)
                        must_list = True
                        self.relists += 1
                    continue
                log.warning("%r: %s failed: %s: %s; retrying", self,
                            "list" if must_list else "watch", e.reason, e.message)
            except Exception:
                if self._stop.is_set():
                    break
                log.exception("%r: unexpected error; retrying", self)
            if self._events_this_watch:
                delay = BACKOFF_MIN
            self._stop.wait(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_MAX)

    def _list(self) -> None:
        result = self.client.list_all(self.resource, self.namespace, label_selector=self.label_selector,
                                      field_selector=self.field_selector)
        with self._dispatch:
            self._replace(result.items)
            self._resource_version = result.resource_version
        if not self._synced.is_set():
            log.debug("%r: synced (%d objects)", self, len(result.items))
            self._synced.set()

    def _replace(self, items: Iterable) -> None:
        """Makes the store hold exactly ``items``, telling the handlers what changed."""
        seen = set()
        for obj in items:
            key = meta_namespace_key(obj)
            seen.add(key)
            old = self.store.put(obj)
            if old is None:
                self._added(obj)
            elif old.metadata.uid != obj.metadata.uid:
                # deleted and created again while we were not watching
                self._deleted(old)
                self._added(obj)
            elif old.metadata.resource_version != obj.metadata.resource_version:
                self._updated(old, obj)
        for key in self.store.keys():
            if key not in seen:
                self._deleted(self.store.remove(key))

    def _watch_once(self) -> None:
        watch = self.client.watch(
            self.resource, self.namespace, label_selector=self.label_selector,
            field_selector=self.field_selector, resource_version=self._resource_version,
            bookmarks=True, timeout=random.uniform(WATCH_TIMEOUT_MIN, WATCH_TIMEOUT_MAX))
        with self._watch_lock:
            self._watch = watch
        try:
            if self._stop.is_set():
                return
            for event in watch:
                self._events_this_watch += 1
                self._apply(event.type, event.object)
                if self._stop.is_set():
                    return
        except ApiError as e:
            if e.reason == "Timeout" and self._events_this_watch:
                return  # our own deadline on a live stream
            raise
        finally:
            with self._watch_lock:
                self._watch = None
            watch.stop()

    def _apply(self, kind: str, obj) -> None:
        rv = obj.metadata.resource_version
        if kind == "BOOKMARK":
            self._resource_version = rv
            return
        with self._dispatch:
            if kind in ("ADDED", "MODIFIED"):
                old = self.store.put(obj)
                if old is None:
                    self._added(obj)
                elif old.metadata.resource_version != rv:
                    self._updated(old, obj)
            elif kind == "DELETED":
                old = self.store.remove(meta_namespace_key(obj))
                if old is not None:
                    self._deleted(obj)
            else:
                log.warning("%r: unknown watch event type %r", self, kind)
            self._resource_version = rv

    def _resync_loop(self) -> None:
        """Every resync period, on_update(obj, obj) for every cached object, so
        controllers re-check state that no event would bring back to them."""
        self._synced.wait()
        while not self._stop.wait(self.resync_period):
            with self._dispatch:
                for obj in self.store.list():
                    self._updated(obj, obj)


def _call(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("informer handler %r failed", fn)


class SharedInformerFactory:
    """One informer per (resource, namespace) for all the controllers of a
    process, so each kind is listed and watched once. Informers asked for after
    ``start()`` are started at once."""

    def __init__(self, client, *, resync_period: float = 0) -> None:
        self.client = client
        self.resync_period = resync_period
        self._lock = threading.Lock()
        self._informers: dict[tuple[str, str], Informer] = {}
        self._started = False

    def informer(self, resource: str, namespace: str = "") -> Informer:
        res = resources.lookup(resource)
        if res is None:
            raise ValueError(f"unknown resource {resource!r}")
        key = (res.name, namespace if res.namespaced else "")
        with self._lock:
            inf = self._informers.get(key)
            if inf is None:
                inf = Informer(self.client, res.name, key[1], resync_period=self.resync_period)
                self._informers[key] = inf
                if self._started:
                    inf.start()
            return inf

    def informers(self) -> list[Informer]:
        with self._lock:
            return list(self._informers.values())

    def start(self) -> None:
        with self._lock:
            self._started = True
            informers = list(self._informers.values())
        for inf in informers:
            inf.start()

    def wait_for_cache_sync(self, timeout: float | None = None) -> bool:
        """True when every informer created so far has synced within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for inf in self.informers():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not inf.wait_for_sync(left):
                return False
        return True

    def stop(self) -> None:
        for inf in self.informers():
            inf.stop()
