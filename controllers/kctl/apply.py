"""``apply``, ``create`` and ``delete`` of manifests.

Apply is kubectl's client-side apply, simplified (not server-side apply): the
manifest is recorded on the object in the last-applied-configuration
annotation, and an object that exists is updated with a three-way merge of
(live object, manifest, last applied manifest): what the manifest says wins;
what it no longer says but the last one did is removed; everything else
(fields the server or a controller filled, labels someone else added) stays.
Lists of objects merge item by item (containers by name). Nothing is sent
when the merge changes nothing; the server also leaves an identical update
unwritten, so an unchanged resourceVersion means "unchanged" too.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from apiserver import manifest
from apiserver.errors import ApiError
from controllers.kctl import kinds
from controllers.kctl.manifests import Document, load
from controllers.kctl.session import CommandError, Session, format_api_error

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# metadata the server owns: a manifest (say, saved `get -o yaml` output)
# may carry them, apply never sends them
SERVER_OWNED_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp",
                         "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink",
                         "managedFields")
CONFLICT_RETRIES = 5
SECRET_VALUE_FIELDS = ("data", "stringData")


def applied_configuration(doc: Document) -> dict[str, Any]:
    """The part of a manifest that apply owns: no status, no server-owned
    metadata, no last-applied annotation, the resolved namespace."""
    config = copy.deepcopy(doc.raw)
    config.pop("status", None)
    meta = config.get("metadata")
    meta = dict(meta) if isinstance(meta, dict) else {}
    for key in SERVER_OWNED_METADATA:
        meta.pop(key, None)
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        annotations = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        if annotations:
            meta["annotations"] = annotations
        else:
            meta.pop("annotations")
    if doc.resource.namespaced:
        meta["namespace"] = doc.namespace
    else:
        meta.pop("namespace", None)
    config["metadata"] = meta
    return config


def three_way_merge(live: Any, config: Any, last: Any) -> Any:
    """``config`` over ``live``: objects merge key by key; a key of ``live``
    that ``config`` lacks is kept unless ``last`` (the previous config) had
    it. Lists of objects merge item by item (by "name" when every item has
    one, as containers and ports do, else by position when the lengths
    agree), so what the server defaulted inside them stays; anything else
    (scalars, other lists) is ``config``'s."""
    if isinstance(config, list) and isinstance(live, list):
        return _merge_lists(live, config, last if isinstance(last, list) else [])
    if not isinstance(config, dict) or not isinstance(live, dict):
        return copy.deepcopy(config)
    last = last if isinstance(last, dict) else {}
    merged = {k: copy.deepcopy(v) for k, v in live.items() if k not in config and k not in last}
    for key, value in config.items():
        merged[key] = three_way_merge(live.get(key), value, last.get(key))
    return merged


def _named(items: list) -> dict | None:
    if not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return None
    return {i["name"]: i for i in items}


def _merge_lists(live: list, config: list, last: list) -> list:
    if not all(isinstance(i, dict) for i in config) or not all(isinstance(i, dict) for i in live):
        return copy.deepcopy(config)
    by_name = _named(config)
    if by_name is not None and len(by_name) == len(config):
        live_named = _named(live) or {}
        last_named = _named(last) or {}
        return [three_way_merge(live_named.get(n, {}), item, last_named.get(n))
                for n, item in by_name.items()]
    if len(live) == len(config):
        lasts = last if len(last) == len(config) else [None] * len(config)
        return [three_way_merge(lv, cf, la) for lv, cf, la in zip(live, config, lasts)]
    return copy.deepcopy(config)


def _last_applied(live) -> dict:
    text = live.metadata.annotations.get(LAST_APPLIED, "")
    try:
        last = json.loads(text) if text else {}
    except ValueError:
        return {}
    return last if isinstance(last, dict) else {}


def _encoded(config: dict) -> str:
    """The last-applied annotation's text. A Secret's values are left out
    (only their keys are kept, which is all the merge needs): annotations are
    not encrypted at rest, the Secret's data is."""
    if config.get("kind") == "Secret":
        config = dict(config)
        for field in SECRET_VALUE_FIELDS:
            if isinstance(config.get(field), dict):
                config[field] = {key: "" for key in config[field]}
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise CommandError(f"cannot record the applied configuration: {e}") from None


def merged_object(live, config: dict):
    """The object apply writes over ``live`` (a typed message) for ``config``."""
    live_dict = manifest.to_dict(live)
    last = _last_applied(live)
    merged = {k: v for k, v in live_dict.items() if k in ("apiVersion", "kind", "status")}
    for key in set(live_dict) | set(config):
        if key in ("apiVersion", "kind", "status"):
            continue
        if key not in config:
            if key not in last:
                merged[key] = live_dict[key]
            continue
        merged[key] = three_way_merge(live_dict.get(key), config[key], last.get(key))
    merged.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = _encoded(config)
    obj = manifest.from_dict(merged)
    obj.metadata.resource_version = live.metadata.resource_version
    return obj


def apply_document(session: Session, doc: Document) -> str:
    """Creates or updates one object; "created", "configured" or "unchanged"."""
    client = session.client
    config = applied_configuration(doc)
    for _ in range(CONFLICT_RETRIES):
        try:
            live = client.get(doc.resource.name, doc.name, doc.namespace)
        except ApiError as e:
            if e.reason != "NotFound":
                raise
            fresh = manifest.from_dict(config)
            fresh.metadata.annotations[LAST_APPLIED] = _encoded(config)
            client.create(fresh)
            return "created"
        wanted = merged_object(live, config)
        if wanted == live:
            return "unchanged"
        try:
            updated = client.update(wanted)
        except ApiError as e:
            if e.reason == "Conflict":
                continue
            raise
        same = updated.metadata.resource_version == live.metadata.resource_version
        return "unchanged" if same else "configured"
    raise CommandError(f"{kinds.quoted(doc.resource, doc.name)} kept changing; try again")


def _for_each(session: Session, docs: list[Document], action, verb: str) -> int:
    """Runs ``action(doc)`` on every document; a failure is printed and the
    rest still run, as kubectl does. The exit code."""
    code = 0
    for doc in docs:
        try:
            action(doc)
        except ApiError as e:
            session.warn(format_api_error(e, f'error when {verb} "{doc.source}": '))
            code = 1
        except CommandError as e:
            session.warn(f"error: {e}")
            code = 1
    return code


def cmd_apply(session: Session, args) -> int:
    docs = load(args.filename, session.namespace, session.namespace_given, "apply")

    def apply(doc: Document) -> None:
        outcome = apply_document(session, doc)
        session.print(f"{kinds.ref(doc.resource, doc.name)} {outcome}")
    return _for_each(session, docs, apply, "applying")


def cmd_create(session: Session, args) -> int:
    docs = load(args.filename, session.namespace, session.namespace_given, "create")

    def create(doc: Document) -> None:
        created = session.client.create(doc.obj)
        session.print(f"{kinds.ref(doc.resource, created.metadata.name)} created")
    return _for_each(session, docs, create, "creating")


def delete_files(session: Session, args, options: dict) -> int:
    docs = load(args.filename, session.namespace, session.namespace_given, "delete")

    def delete(doc: Document) -> None:
        try:
            session.client.delete(doc.resource.name, doc.name, doc.namespace, **options)
        except ApiError as e:
            if e.reason == "NotFound" and args.ignore_not_found:
                return
            raise
        session.print(f"{kinds.quoted(doc.resource, doc.name)} deleted")
    return _for_each(session, docs, delete, "deleting")
