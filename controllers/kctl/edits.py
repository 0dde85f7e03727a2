"""Commands that change objects named on the command line: ``delete``,
``scale``, ``cordon``/``uncordon`` and ``set image``."""

from __future__ import annotations

from apiserver import resources
from apiserver.errors import ApiError
from apiserver.resources import Resource
from controllers.kctl import apply, kinds
from controllers.kctl.session import CommandError, Session, format_api_error

CASCADE = {"background": "Background", "foreground": "Foreground", "orphan": "Orphan",
           "true": "Background", "false": "Orphan"}
CONFLICT_RETRIES = 5


def delete_options(args) -> dict:
    """The client.delete keywords for --cascade, --grace-period, --now, --force."""
    policy = CASCADE.get(args.cascade.lower())
    if policy is None:
        raise CommandError(f'invalid cascade value ({args.cascade}). Must be "background", '
                           f'"foreground", or "orphan"')
    grace = args.grace_period
    if args.now:
        grace = 1
    if grace is not None and grace < 0:
        grace = None
    if grace == 0 and not args.force:
        grace = 1  # as kubectl: an immediate deletion must be asked for with --force
    if args.force and grace is None:
        grace = 0
    return {"propagation_policy": policy, "grace_period_seconds": grace}


def _delete_targets(session: Session, args) -> list[tuple[Resource, str, str]]:
    """(resource, namespace, name) from "KIND NAME...", "KIND/NAME", -l or --all."""
    if args.all or args.selector:
        if not args.args or len(args.args) != 1 or "/" in args.args[0]:
            raise CommandError("--all and -l take one KIND and no names")
        out = []
        for res in kinds.resolve_many(args.args[0]):
            found = session.client.list_all(res.name, session.list_namespace() if res.namespaced else "",
                                            label_selector=args.selector or "")
            out += [(res, o.metadata.namespace, o.metadata.name) for o in found.items]
        return out
    return [(res, session.namespace, name) for res, name in kinds.targets(args.args)]


def cmd_delete(session: Session, args) -> int:
    options = delete_options(args)
    if args.filename:
        if args.args:
            raise CommandError("when -f is given, name no KIND or NAME on the command line")
        return apply.delete_files(session, args, options)
    targets = _delete_targets(session, args)
    if not targets and (args.all or args.selector):
        session.warn("No resources found")
    code = 0
    for res, namespace, name in targets:
        try:
            session.client.delete(res.name, name, namespace, **options)
        except ApiError as e:
            if e.reason == "NotFound" and args.ignore_not_found:
                continue
            session.warn(format_api_error(e))
            code = 1
            continue
        session.print(f"{kinds.quoted(res, name)} deleted")
    return code


def cmd_scale(session: Session, args) -> int:
    if args.replicas < 0:
        raise CommandError("The --replicas=COUNT flag is required, and COUNT must be greater than or equal to 0")
    code = 0
    for res, name in kinds.targets(args.args):
        if res.name not in ("deployments", "replicasets"):
            raise CommandError(f"cannot scale {kinds.qualified_plural(res)}: only deployments "
                               f"and replicasets")
        try:
            if args.current_replicas is not None:
                current = session.client.get(res.name, name, session.namespace)
                have = current.spec.replicas if current.spec.HasField("replicas") else 1
                if have != args.current_replicas:
                    raise CommandError(f"Expected replicas to be {args.current_replicas}, was {have}")
                patch = {"metadata": {"resourceVersion": current.metadata.resource_version},
                         "spec": {"replicas": args.replicas}}
            else:
                patch = {"spec": {"replicas": args.replicas}}
            session.client.patch(res.name, name, patch, session.namespace)
        except ApiError as e:
            session.warn(format_api_error(e))
            code = 1
            continue
        session.print(f"{kinds.ref(res, name)} scaled")
    return code


def cmd_cordon(session: Session, args) -> int:
    return set_unschedulable(session, args, True)


def cmd_uncordon(session: Session, args) -> int:
    return set_unschedulable(session, args, False)


def set_unschedulable(session: Session, args, unschedulable: bool) -> int:
    res = kinds.resolve("nodes")
    verb = "cordoned" if unschedulable else "uncordoned"
    code = 0
    for name in args.nodes:
        name = name.split("/", 1)[1] if name.startswith(("node/", "nodes/")) else name
        try:
            node = session.client.get("nodes", name)
            if node.spec.unschedulable == unschedulable:
                session.print(f"{kinds.ref(res, name)} already {verb}")
                continue
            session.client.patch("nodes", name, {"spec": {"unschedulable": unschedulable}})
        except ApiError as e:
            session.warn(format_api_error(e))
            code = 1
            continue
        session.print(f"{kinds.ref(res, name)} {verb}")
    return code


def _pod_spec(obj):
    return obj.spec if resources.of(obj).name == "pods" else obj.spec.template.spec


def set_images(obj, images: dict[str, str]) -> bool:
    """Sets container images by name ("*" for all) in a pod, ReplicaSet or
    Deployment; CommandError naming a container that is not there. Whether
    anything changed."""
    spec = _pod_spec(obj)
    containers = [*spec.init_containers, *spec.containers]
    changed = False
    for name, image in images.items():
        matched = [c for c in containers if name in ("*", c.name)]
        if not matched:
            raise CommandError(f'unable to find container named "{name}"')
        for c in matched:
            changed |= c.image != image
            c.image = image
    return changed


def cmd_set_image(session: Session, args) -> int:
    images = {}
    targets_args = []
    for arg in args.args:
        if "=" in arg:
            name, _, image = arg.partition("=")
            if not name or not image:
                raise CommandError(f"invalid image update {arg!r}: want CONTAINER=IMAGE")
            images[name] = image
        else:
            targets_args.append(arg)
    if not images:
        raise CommandError("at least one image update is required (CONTAINER=IMAGE)")
    code = 0
    for res, name in kinds.targets(targets_args):
        if res.name not in ("deployments", "replicasets", "pods"):
            raise CommandError(f"cannot set images of {kinds.qualified_plural(res)}")
        try:
            for attempt in range(CONFLICT_RETRIES):
                obj = session.client.get(res.name, name, session.namespace)
                set_images(obj, images)
                try:
                    session.client.update(obj)
                    break
                except ApiError as e:
                    if e.reason != "Conflict" or attempt == CONFLICT_RETRIES - 1:
                        raise
        except ApiError as e:
            session.warn(format_api_error(e))
            code = 1
            continue
        session.print(f"{kinds.ref(res, name)} image updated")
    return code
