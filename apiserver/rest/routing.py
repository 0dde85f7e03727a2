"""Kubernetes' REST paths, parsed: which resource, namespace, name and
subresource a request is about.

    /api/v1/<resource>[/<name>[/<subresource>]]
    /api/v1/namespaces/<namespace>/<resource>[/<name>[/<subresource>]]
    /apis/<group>/<version>/... the same under a named group
    /api/v1/nodes/<name>/proxy[/<path>...] the path after proxy/ kept whole (also pods', services')
"""

from __future__ import annotations

from dataclasses import dataclass

from apiserver import resources
from apiserver.resources import Resource


@dataclass(frozen=True)
class Target:
    res: Resource
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    path: str = ""  # what follows a proxy subresource (nodes/<name>/proxy/<path>), "/"-joined


# the resources whose proxy subresource takes the rest of the path
PROXIED = ("nodes", "pods", "services")


class NoRoute(Exception):
    """The path names nothing served (404)."""


def parse(path: str) -> Target | None:
    """The Target of a resource path; None if ``path`` is not under /api/v1 or
    /apis/<group>/<version> (discovery or something else); NoRoute when it is
    but names no resource served."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        api_version, rest = "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = ""
    # /namespaces/<ns>/<resource>... unless it is /api/v1/namespaces/<name>/status
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in resources.BY_NAME:
        namespace, rest = rest[1], rest[2:]
    res = resources.BY_NAME.get(rest[0])
    if res is None or res.api_version != api_version:
        raise NoRoute(path)
    if len(rest) > 3 and (rest[2] != "proxy" or res.name not in PROXIED):
        raise NoRoute(path)
    if namespace and not res.namespaced:
        raise NoRoute(path)
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    return Target(res, namespace, name, sub, "/".join(rest[3:]))
