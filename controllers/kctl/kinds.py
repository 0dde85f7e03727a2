"""Resource names as kubectl reads and prints them.

Read: "deployments", "deployment", "deploy", "Deployment", "deployments.apps",
"deploy/web". Printed: "deployment.apps/web" (a reference), 'deployment.apps
"web"' (in deleted messages), "deployments.apps" (in errors).
"""

from __future__ import annotations

from apiserver import resources
from apiserver.resources import Resource
from controllers.kctl.session import CommandError


def group_of(res: Resource) -> str:
    """The API group: "" for the core kinds, "apps", "coordination.k8s.io"."""
    return res.api_version.split("/")[0] if "/" in res.api_version else ""


def resolve(text: str) -> Resource:
    """The resource ``text`` names, with or without its group; CommandError
    with kubectl's message when there is none."""
    res = resources.lookup(text)
    if res is None and "." in text:
        base, _, group = text.partition(".")
        candidate = resources.lookup(base)
        if candidate is not None and group_of(candidate) == group:
            res = candidate
    if res is None:
        raise CommandError(f'the server doesn\'t have a resource type "{text}"')
    return res


def resolve_many(text: str) -> list[Resource]:
    """Comma-separated kinds ("deploy,rs")."""
    return [resolve(part) for part in text.split(",") if part]


def _dotted(word: str, res: Resource) -> str:
    group = group_of(res)
    return f"{word}.{group}" if group else word


def qualified_plural(res: Resource) -> str:
    """"deployments.apps", "pods"."""
    return _dotted(res.name, res)


def ref(res: Resource, name: str) -> str:
    """"deployment.apps/web", "service/web"."""
    return f"{_dotted(res.singular, res)}/{name}"


def quoted(res: Resource, name: str) -> str:
    """'deployment.apps "web"'."""
    return f'{_dotted(res.singular, res)} "{name}"'


def targets(args: list[str], *, allow_many: bool = True) -> list[tuple[Resource, str]]:
    """(resource, name) pairs from "KIND NAME..." or "KIND/NAME ..."."""
    if not args:
        raise CommandError("you must specify the type of resource and a name")
    if "/" in args[0]:
        pairs = []
        for arg in args:
            kind, sep, name = arg.partition("/")
            if not sep or not kind or not name:
                raise CommandError(f"there is no need to specify a resource type as a separate "
                                   f"argument when passing arguments in resource/name form "
                                   f"(e.g. 'kctl get resource/<resource_name>' instead of "
                                   f"'kctl get resource resource/<resource_name>'): {arg!r}")
            pairs.append((resolve(kind), name))
    else:
        res = resolve(args[0])
        if len(args) < 2:
            raise CommandError(f"resource name may not be empty (kctl ... {args[0]} NAME)")
        pairs = [(res, name) for name in args[1:]]
    if not allow_many and len(pairs) > 1:
        raise CommandError("exactly one NAME is expected")
    return pairs


def one_target(args: list[str], *, kinds: tuple[str, ...]) -> tuple[Resource, str]:
    """The single KIND/NAME (or KIND NAME) a command works on, one of ``kinds``
    (plural names)."""
    [(res, name)] = targets(args, allow_many=False)
    if res.name not in kinds:
        raise CommandError(f"{qualified_plural(res)} are not supported here "
                           f"(only {', '.join(kinds)})")
    return res, name
