"""``get``: tables, -o yaml|json|name|wide, and -w/--watch-only streams."""

from __future__ import annotations

from apiserver.errors import ApiError
from apiserver.resources import Resource
from controllers.kctl import kinds, printers
from controllers.kctl.session import CommandError, Session, format_api_error

STRUCTURED = ("yaml", "json", "name")


def _requests(args: list[str]) -> list[tuple[Resource, list[str]]]:
    """(resource, names) in the order asked: "deploy,rs", "deploy web db",
    "deploy/web rs/web-1"."""
    if not args:
        raise CommandError("You must specify the type of resource to get. "
                           "Use \"kctl api-resources\" for a complete list of supported resources.")
    if "/" in args[0]:
        grouped: dict[str, tuple[Resource, list[str]]] = {}
        for res, name in kinds.targets(args):
            grouped.setdefault(res.name, (res, []))[1].append(name)
        return list(grouped.values())
    return [(res, list(args[1:])) for res in kinds.resolve_many(args[0])]


def _no_resources(session: Session, resources_asked: list[Resource]) -> None:
    if session.all_namespaces or not any(r.namespaced for r in resources_asked):
        session.warn("No resources found")
    else:
        session.warn(f"No resources found in {session.namespace} namespace.")


def _read(session: Session, res: Resource, names: list[str], args) -> tuple[list, int, str]:
    """(objects, exit code, resourceVersion to watch from)."""
    client = session.client
    if not names:
        found = client.list_all(res.name, session.list_namespace() if res.namespaced else "",
                                label_selector=args.selector, field_selector=args.field_selector)
        return found.items, 0, found.resource_version
    objs, code, rv = [], 0, ""
    for name in names:
        try:
            obj = client.get(res.name, name, session.namespace)
        except ApiError as e:
            session.warn(format_api_error(e))
            code = 1
            continue
        objs.append(obj)
        rv = max(rv, obj.metadata.resource_version, key=lambda v: int(v or 0))
    return objs, code, rv


def _table(session: Session, res: Resource, args, *, show_kind: bool = False,
           event_column: bool = False) -> printers.Table:
    return printers.Table(res, wide=args.output == "wide", namespaced_column=session.all_namespaces,
                          show_labels=args.show_labels, show_kind=show_kind,
                          event_column=event_column)


def cmd_get(session: Session, args) -> int:
    requests = _requests(args.args)
    if args.output not in (None, "wide", *STRUCTURED):
        raise CommandError(f'unable to match a printer suitable for the output format "{args.output}", '
                           f"allowed formats are: json,name,wide,yaml")
    if args.watch or args.watch_only:
        if len(requests) != 1:
            raise CommandError("you may only specify a single resource type")
        return _watch(session, *requests[0], args)
    code = 0
    found: list[tuple[Resource, list]] = []
    for res, names in requests:
        objs, c, _ = _read(session, res, names, args)
        code = max(code, c)
        found.append((res, objs))
    if args.output in STRUCTURED:
        objs = [o for _, group in found for o in group]
        single = len(requests) == 1 and len(requests[0][1]) == 1
        # a missing named object prints nothing; an empty list is an empty List
        if objs or (not single and args.output != "name"):
            printers.write_objects(session.out, objs, args.output, single=single)
        return code
    shown = [(res, objs) for res, objs in found if objs]
    if not shown:
        if not any(names for _, names in requests):
            _no_resources(session, [r for r, _ in requests])
        return code
    for i, (res, objs) in enumerate(shown):
        table = _table(session, res, args, show_kind=len(requests) > 1)
        rows = ([] if args.no_headers else [table.headers()]) + [table.row(o) for o in objs]
        if i:
            session.print()
        for line in table.render(rows):
            session.print(line)
    return code


def _emit(session: Session, table: printers.Table, args, obj, event: str, header_due: bool) -> bool:
    """Prints one watched object; False once the header is printed."""
    if args.output in STRUCTURED:
        if args.output == "yaml":
            session.out.write("---\n")
        printers.write_objects(session.out, [obj], args.output, single=True)
        return header_due
    rows = [table.headers()] if header_due and not args.no_headers else []
    rows.append(table.row(obj, event=event))
    for line in table.render(rows):
        session.print(line)
    return False


def _watch(session: Session, res: Resource, names: list[str], args) -> int:
    """Prints the current objects (unless --watch-only), then one row per
    change until interrupted; relists when the server says Expired."""
    table = _table(session, res, args, event_column=args.output_watch_events)
    wanted = set(names)
    field_selector = args.field_selector
    if len(names) == 1:
        field_selector = ",".join(filter(None, [field_selector, f"metadata.name={names[0]}"]))
    namespace = session.list_namespace() if res.namespaced else ""
    header_due = True
    client = session.client
    try:
        objs, code, rv = _read(session, res, names, args)
        if code:
            return code
        if not args.watch_only:
            for obj in objs:
                header_due = _emit(session, table, args, obj, "ADDED", header_due)
            if not objs and not names:
                _no_resources(session, [res])
        while True:
            try:
                with client.watch(res.name, namespace, label_selector=args.selector,
                                  field_selector=field_selector, resource_version=rv,
                                  bookmarks=True) as stream:
                    for event in stream:
                        rv = event.object.metadata.resource_version or rv
                        if event.type == "BOOKMARK":
                            continue
                        if wanted and event.object.metadata.name not in wanted:
                            continue
                        header_due = _emit(session, table, args, event.object, event.type, header_due)
            except ApiError as e:
                if e.reason not in ("Expired", "Gone"):
                    raise
                found = client.list_all(res.name, namespace, label_selector=args.selector,
                                        field_selector=field_selector)
                rv = found.resource_version
                for obj in found.items:
                    if not wanted or obj.metadata.name in wanted:
                        header_due = _emit(session, table, args, obj, "ADDED", header_due)
    except KeyboardInterrupt:
        return 0
