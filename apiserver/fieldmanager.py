"""metadata.managedFields: who set which field, as kube-apiserver's field
manager records it (k8s.io/apiserver's fieldmanager over structured-merge-diff),
and server-side apply over it.

- An update (create, update, patch) by a manager gives it the fields it added
  or changed; fields it changed or removed are taken from the others, without
  complaint (operation "Update", one entry per manager, apiVersion and subresource).
- An apply (``application/apply-patch+yaml``) merges the applied configuration
  into the object; the applier then owns exactly the fields it applied. A field
  it would change that another manager owns is a conflict (409, listing them)
  unless forced, which takes the fields. Fields it applied last time and no
  longer applies are removed from the object unless someone else owns them.
- Fields nobody owns: apiVersion, kind and the metadata the server sets
  (upstream's stripped fields); the status of a kind with a status
  subresource belongs to status writers, everything else to the main resource.

The object is handled as its JSON (convert.to_json) and the schema is
fieldpath's, from our protos.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone

import yaml

from apiserver import errors, fieldpath, manifest
from apiserver.errors import ApiError
from apiserver.limits import check_request_size
from apiserver.pb import meta_pb2
from apiserver.resources import Resource
from apiserver.rest.convert import normalize_times, to_json  # the REST API's JSON, both sides alike

APPLY, UPDATE = "Apply", "Update"
# kubectl's server-side apply manager: the one upstream lets take over from client-side apply
KUBECTL = "kubectl"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MAX_MANAGER_LENGTH = 128
# more Update entries than this and the oldest fold into one (upstream's capManagersManager)
MAX_UPDATERS = 10
ANCIENT = "ancient-changes"
# what the server sets and nobody owns (upstream's stripped fields)
STRIPPED = frozenset(
    ((fieldpath.FIELD, name),) for name in ("apiVersion", "kind")) | frozenset(
    ((fieldpath.FIELD, "metadata"), (fieldpath.FIELD, name)) for name in (
        "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
        "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"))
STATUS = ((fieldpath.FIELD, "status"),)


@dataclass(frozen=True)
class Manager:
    """Who writes: the request's fieldManager, and the subresource it writes through."""
    name: str
    subresource: str = ""


def manager_from_user_agent(user_agent: str) -> str:
    """Upstream's default manager: the User-Agent up to its first "/", printable
    characters only, at most 128 bytes."""
    prefix = user_agent.split("/", 1)[0]
    printable = "".join(c for c in prefix if unicodedata.category(c)[0] not in "CZ" or c == " ")
    return printable.encode()[:MAX_MANAGER_LENGTH].decode(errors="ignore")


def check_manager(name: str, *, apply: bool, kind: str = "PatchOptions.meta.k8s.io") -> None:
    """apimachinery's ValidateFieldManager (and apply's requirement of one)."""
    if apply and not name:
        raise errors.invalid(kind, "", [("fieldManager", "FieldValueRequired",
                                         "Required value: is required for apply patch")])
    if len(name.encode()) > MAX_MANAGER_LENGTH:
        raise errors.invalid(kind, "", [("fieldManager", "FieldValueTooLong",
                                         f"Too long: may not be more than {MAX_MANAGER_LENGTH} bytes")])
    if any(not c.isprintable() for c in name):
        raise errors.invalid(kind, "", [("fieldManager", "FieldValueInvalid",
                                         f'Invalid value: "{name}": must only contain printable characters')])


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Entry:
    manager: str
    operation: str
    api_version: str
    subresource: str
    time: str
    fields: set = field(default_factory=set)

    @property
    def identity(self) -> tuple:
        # an applier is one entry whatever version it applied; updaters one per version
        return (self.manager, self.operation, "" if self.operation == APPLY else self.api_version,
                self.subresource)


def decode(meta) -> list[Entry]:
    out = []
    for e in meta.managed_fields:
        try:
            fields = fieldpath.from_fields_v1(json.loads(e.fields_v1.raw or "{}"))
        except ValueError:
            fields = set()
        out.append(Entry(e.manager, e.operation, e.api_version, e.subresource, e.time, fields))
    return out


def _cap_updaters(entries: list[Entry]) -> list[Entry]:
    """At most MAX_UPDATERS Update entries: from the oldest on, each apiVersion's
    second and later entries fold, with the first, into one "ancient-changes"
    entry of that version, which takes the time of the newest it holds."""
    updaters = sorted((e for e in entries if e.operation == UPDATE and e.fields), key=lambda e: (e.time, e.manager))
    count = len(updaters)
    first: dict[str, Entry] = {}
    buckets: dict[str, Entry] = {}
    gone: set[int] = set()
    for e in updaters:
        if count <= MAX_UPDATERS:
            break
        if e.api_version not in first:
            first[e.api_version] = e
            continue
        bucket = buckets.get(e.api_version)
        if bucket is None:
            head = first[e.api_version]
            bucket = buckets[e.api_version] = Entry(ANCIENT, UPDATE, e.api_version, "", head.time, set(head.fields))
            gone.add(id(head))
        bucket.fields |= e.fields
        bucket.time = e.time
        gone.add(id(e))
        count -= 1
    if not gone:
        return entries
    return [e for e in entries if id(e) not in gone] + list(buckets.values())


def encode(meta, entries: list[Entry]) -> None:
    """Entries with fields (at most MAX_UPDATERS updaters), in upstream's order:
    Apply before Update, then by time, manager, apiVersion, subresource."""
    kept = sorted((e for e in _cap_updaters(entries) if e.fields),
                  key=lambda e: (e.operation, e.time, e.manager, e.api_version, e.subresource))
    del meta.managed_fields[:]
    for e in kept:
        meta.managed_fields.append(meta_pb2.ManagedFieldsEntry(
            manager=e.manager, operation=e.operation, api_version=e.api_version, time=e.time,
            fields_type="FieldsV1", subresource=e.subresource,
            fields_v1=meta_pb2.FieldsV1(raw=json.dumps(fieldpath.to_fields_v1(e.fields),
                                                       separators=(",", ":"), ensure_ascii=False))))


def _owned_here(res: Resource, manager: Manager, paths: set) -> set:
    """``paths`` less the fields this manager cannot own through its subresource."""
    out = {p for p in paths if not fieldpath.under(p, STRIPPED)}
    if res.has_status:
        if manager.subresource == "status":
            out = {p for p in out if p[:1] == STATUS}
        else:
            out = {p for p in out if p[:1] != STATUS}
    return out


def _resettable(res: Resource, manager: Manager, config: dict) -> dict:
    """The part of an applied configuration its subresource may change (upstream's
    reset fields): status through status, the rest through the main resource."""
    if not res.has_status:
        return config
    if manager.subresource == "status":
        meta = config.get("metadata") or {}
        return {"apiVersion": config.get("apiVersion"), "kind": config.get("kind"),
                "metadata": {k: meta[k] for k in ("name", "namespace") if k in meta},
                **({"status": config["status"]} if "status" in config else {})}
    return {k: v for k, v in config.items() if k != "status"}


def _entry(entries: list[Entry], identity: tuple) -> Entry | None:
    return next((e for e in entries if e.identity == identity), None)


def track_update(res: Resource, current, new, manager: Manager) -> None:
    """Sets new.metadata.managed_fields for an update of ``current`` (None: a
    create) to ``new`` by ``manager``. A request that sends no managedFields
    keeps the stored ones (as upstream; sending them replaces them)."""
    base = new if new.metadata.managed_fields or current is None else current
    old = to_json(current) if current is not None else {"metadata": {}, "spec": {}, "status": {}}
    cmp = fieldpath.compare(old, to_json(new), new.DESCRIPTOR)
    if not cmp.changed():
        if base is not new:
            new.metadata.managed_fields.extend(current.metadata.managed_fields)
        return  # nobody gains or loses anything
    entries = decode(base.metadata)
    taken = cmp.modified | cmp.added
    for e in entries:
        e.fields -= cmp.removed
        e.fields -= taken
    identity = (manager.name, UPDATE, res.api_version, manager.subresource)
    mine = _entry(entries, identity)
    gained = _owned_here(res, manager, taken)
    if mine is None:
        mine = Entry(manager.name, UPDATE, res.api_version, manager.subresource, "")
        entries.append(mine)
    mine.fields |= gained
    mine.time = _now()  # the object changed
    encode(new.metadata, entries)


def _manager_text(e: Entry) -> str:
    """The manager as conflicts name it: its identity (upstream's manager
    identifier, which has no time), so the same text for every conflict of one entry."""
    text = json.dumps(e.manager)
    if e.subresource:
        text += f" with subresource {json.dumps(e.subresource)}"
    if e.operation == UPDATE:
        text += f" using {e.api_version}"
    return text


def conflict_error(conflicts: list[tuple[Entry, tuple]]) -> ApiError:
    """kube-apiserver's apply conflict (fieldmanager's NewConflictError): 409
    Conflict, one cause per field, the message listing them by manager."""
    causes = [("" if not p else fieldpath.path_text(p), "FieldManagerConflict",
               f"conflict with {_manager_text(e)}") for e, p in conflicts]
    if len(conflicts) == 1:
        e, p = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {_manager_text(e)}: {fieldpath.path_text(p)}"
    else:
        lines = []
        for text in sorted({_manager_text(e) for e, _ in conflicts}):
            lines.append(f"conflicts with {text}:")
            lines.extend(f"- {fieldpath.path_text(p)}" for e, p in conflicts if _manager_text(e) == text)
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError("Conflict", message, causes=causes)


def apply(res: Resource, current, config: dict, manager: Manager, *, force: bool):
    """The object after applying ``config`` (a dict, already checked) to
    ``current`` (None: the object does not exist), its managedFields set;
    ApiError Conflict when another manager owns a field this changes."""
    desc = res.new().DESCRIPTOR
    wanted_rv = (config.get("metadata") or {}).get("resourceVersion")
    if wanted_rv and current is not None and str(wanted_rv) != current.metadata.resource_version:
        # a resourceVersion in the configuration is a precondition, as in an update
        raise errors.conflict(res.qualified, current.metadata.name)
    config = _resettable(res, manager, config)
    live = to_json(current) if current is not None else {}
    entries = decode(current.metadata) if current is not None else []
    identity = (manager.name, APPLY, "", manager.subresource)
    mine = _entry(entries, identity)
    last = set(mine.fields) if mine is not None else set()
    try:
        applied = _owned_here(res, manager, fieldpath.field_set(config, desc))
        merged = fieldpath.merge(live, config, desc)
    except ValueError as e:
        raise errors.bad_request(f"failed to create typed patch object: {e}") from None
    if mine is None:
        mine = Entry(manager.name, APPLY, res.api_version, manager.subresource, "")
        entries.append(mine)
    mine.fields = applied
    mine.api_version = res.api_version

    # fields applied last time and not now go, unless someone still owns them
    # (parents first: an item goes whole, not key field first)
    owned = set().union(*(e.fields for e in entries))
    for path in sorted(last - applied, key=len):
        if path not in owned and not fieldpath.has_descendant(path, owned) and not fieldpath.is_key(path):
            fieldpath.remove(merged, path, desc)
    try:
        cmp = fieldpath.compare(live, merged, desc)
    except ValueError as e:
        raise errors.bad_request(f"failed to create typed patch object: {e}") from None
    changed = cmp.modified | cmp.added
    conflicts = []
    for e in entries:
        if e is mine:
            continue
        for p in sorted(e.fields & changed):
            conflicts.append((e, p))
    if conflicts and not force and manager.name == KUBECTL:
        # fields client-side apply set and still hold their value may be taken over
        allowed = _client_side_applied(live, desc)
        conflicts = [(e, p) for e, p in conflicts if p not in allowed]
    if conflicts and not force:
        raise conflict_error(conflicts)
    for e in entries:
        if e is not mine:
            e.fields -= changed
            e.fields -= cmp.removed
    if cmp.changed() or mine.fields != last or not mine.time:
        mine.time = _now()

    # unknown fields were refused or reported with the configuration; here they go
    new = manifest.from_dict({**merged, "apiVersion": res.api_version, "kind": res.kind}, unknown_fields=[])
    if current is not None:
        # what the server keeps, whatever the configuration says
        new.metadata.resource_version = current.metadata.resource_version
    encode(new.metadata, entries)
    if manager.name == KUBECTL and LAST_APPLIED in new.metadata.annotations:
        # kept in step for a later client-side apply (upstream's lastAppliedUpdater)
        kept = json.loads(json.dumps(config))
        ((kept.get("metadata") or {}).get("annotations") or {}).pop(LAST_APPLIED, None)
        new.metadata.annotations[LAST_APPLIED] = json.dumps(kept, separators=(",", ":")) + "\n"
    return new


def _client_side_applied(live: dict, desc) -> set:
    """The fields of the object's last-applied-configuration whose values the object
    still has (upstream's lastAppliedManager): a move from ``kubectl apply`` to
    ``kubectl apply --server-side`` takes them without conflicts."""
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        last = json.loads(text) if text else None
    except ValueError:
        return set()
    if not isinstance(last, dict) or last.get("apiVersion") != live.get("apiVersion"):
        return set()
    try:
        cmp = fieldpath.compare(last, live, desc)
        return fieldpath.field_set(last, desc) - cmp.modified - cmp.added - cmp.removed
    except ValueError:
        return set()


def parse_config(body: bytes | str, res: Resource, namespace: str, name: str, *, validation: str = "Strict",
                 warnings: list[str] | None = None) -> dict:
    """An applied configuration: a YAML (or JSON) object of ``res``'s kind named
    ``name``, its fields checked as a create's are (types; unknown fields refused
    under Strict, else dropped and, under Warn or "", reported in ``warnings``)."""
    check_request_size(len(body))
    try:
        config = yaml.safe_load(body)
    except yaml.YAMLError as e:
        raise errors.bad_request(f"error decoding YAML: {e}") from None
    except RecursionError:
        raise errors.bad_request("error decoding YAML: exceeded max depth") from None
    if not isinstance(config, dict):
        raise errors.bad_request("error decoding YAML: the applied configuration must be an object")
    api_version, kind = config.get("apiVersion"), config.get("kind")
    if not api_version or not kind:
        raise errors.bad_request("invalid object type: the applied configuration needs apiVersion and kind")
    if api_version != res.api_version or kind != res.kind:
        raise errors.bad_request(f"the kind of the applied configuration ({api_version}, Kind={kind}) "
                                 f"does not match the request's ({res.api_version}, Kind={res.kind})")
    meta = config.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise errors.bad_request("metadata.name is required in an applied configuration")
    if meta["name"] != name:
        raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the name "
                                 f"on the URL ({name})")
    if res.namespaced and meta.get("namespace") and namespace and meta["namespace"] != namespace:
        raise errors.bad_request("the namespace of the provided object does not match the namespace "
                                 "sent on the request")
    normalize_times(config)
    unknown: list[str] | None = None if validation == "Strict" else []
    manifest.from_dict(config, unknown_fields=unknown)  # types and unknown fields, as a create
    if unknown and validation in ("", "Warn") and warnings is not None:
        warnings.extend(f'unknown field "{p}"' for p in unknown)
    return config
