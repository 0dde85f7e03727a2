"""The pod garbage collector's orphan sweep on caches filled by hand: pods of a Node that is gone
are deleted at once, pods of a Node the cache has not seen yet (but the apiserver has) stay."""

from __future__ import annotations

from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from controllers.informer import Store
from controllers.podgc import PodGCController


def _pod(name: str, node: str) -> core_pb2.Pod:
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace, p.metadata.uid = name, "default", f"uid-{name}"
    p.spec.node_name = node
    return p


def _node(name: str) -> core_pb2.Node:
    n = core_pb2.Node()
    n.metadata.name = name
    return n


class _Informers:
    def __init__(self, nodes, pods) -> None:
        self.stores = {"nodes": Store(), "pods": Store()}
        for obj in nodes:
            self.stores["nodes"].put(obj)
        for obj in pods:
            self.stores["pods"].put(obj)

    def informer(self, name):
        return type("I", (), {"store": self.stores[name]})()


class _Api:
    def __init__(self, nodes) -> None:
        self.nodes, self.deleted = set(nodes), []

    def get(self, kind, name, namespace=""):
        if name not in self.nodes:
            raise ApiError("NotFound", f'nodes "{name}" not found')
        return _node(name)

    def delete(self, kind, name, namespace="default", *, uid="", grace_period_seconds=None):
        self.deleted.append((name, uid, grace_period_seconds))


def test_pods_of_a_deleted_node_are_deleted_at_once():
    pods = [_pod("a", "gone"), _pod("b", "gone"), _pod("c", "here"), _pod("pending", "")]
    api = _Api({"here"})
    gc = PodGCController(api, _Informers([_node("here")], pods))
    assert gc.gc_orphaned() == 2
    assert sorted(api.deleted) == [("a", "uid-a", 0), ("b", "uid-b", 0)]


def test_a_node_missing_only_from_the_cache_keeps_its_pods():
    api = _Api({"new"})  # registered, not yet seen by the nodes informer
    gc = PodGCController(api, _Informers([], [_pod("a", "new")]))
    assert gc.gc_orphaned() == 0 and api.deleted == []
