"""Objects to the JSON the REST API answers with: manifest.to_dict, with
IntOrString values that are numbers written as JSON numbers, as Kubernetes
writes them (our protos keep IntOrString as text, so ``targetPort: 80`` would
come back as "80", and ``kubectl apply`` would see a change that is not one).
Only the paths where IntOrString fields live are visited (a whole-object walk
cost as much as the conversion itself).
"""

from __future__ import annotations

import json

from apiserver import manifest

_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HANDLERS = ("httpGet", "tcpSocket")


def _number(d: dict | None, key: str) -> None:
    if d is not None:
        v = d.get(key)
        if isinstance(v, str) and v.isdigit() and v.isascii():
            d[key] = int(v)


def _fix_pod_spec(spec: dict | None) -> None:
    if not spec:
        return
    for c in (*spec.get("containers", ()), *spec.get("initContainers", ())):
        for probe in _PROBES:
            p = c.get(probe)
            if p:
                for h in _HANDLERS:
                    _number(p.get(h), "port")
        for hook in (c.get("lifecycle") or {}).values():
            for h in _HANDLERS:
                _number(hook.get(h), "port")


def to_json(msg) -> dict:
    """The object as Kubernetes JSON (apiVersion and kind first)."""
    out = manifest.to_dict(msg)
    kind, spec = out["kind"], out.get("spec")
    if not spec:
        return out
    if kind == "Pod":
        _fix_pod_spec(spec)
    elif kind in ("Deployment", "ReplicaSet"):
        _fix_pod_spec((spec.get("template") or {}).get("spec"))
        rolling = (spec.get("strategy") or {}).get("rollingUpdate")
        _number(rolling, "maxSurge")
        _number(rolling, "maxUnavailable")
    elif kind == "Service":
        for port in spec.get("ports", ()):
            _number(port, "targetPort")
    return out


class ItemCache:
    """The JSON bytes of list items (without apiVersion and kind), by object
    and resourceVersion: a resourceVersion names one content of one object,
    so an entry never goes stale, and a list that returns the same objects
    again (informers relisting, kubectl get) costs no conversion. The last
    ``capacity`` entries are kept."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._items: dict[tuple, bytes] = {}

    def item(self, msg) -> bytes:
        meta = msg.metadata
        key = (type(msg), meta.namespace, meta.name, meta.resource_version)
        data = self._items.get(key)
        if data is None:
            obj = to_json(msg)
            obj.pop("apiVersion", None)
            obj.pop("kind", None)
            data = json.dumps(obj, separators=(",", ":")).encode()
            if meta.resource_version:
                self._items[key] = data
                if len(self._items) > self.capacity:
                    del self._items[next(iter(self._items))]
        return data
