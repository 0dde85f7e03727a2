"""Field sets over objects' JSON, as structured-merge-diff (sigs.k8s.io/
structured-merge-diff) defines them for server-side apply: which fields a
manager owns, what an update added, changed or removed, and the merge of an
applied configuration into the live object.

A path is a tuple of path elements, each a (kind, payload) pair that sorts as
upstream's PathElement does (field names before keys before values before
indexes):

- ``(FIELD, "name")``: a struct field or map key (``f:name`` in FieldsV1)
- ``(KEY, '{"name":"c"}')``: an associative list's item by its key fields,
  canonical JSON (``k:{...}``)
- ``(VALUE, '"x"')``: a set list's item (``v:"x"``)
- ``(INDEX, 0)``: an atomic list's item (``i:0``; read, never made here)

A set is a Python set of paths: a node is a member when its path is in the
set. The schema is our protos' descriptors plus what k8s.io/api's tags say of
lists and structs (LIST_KEYS, SETS, ATOMIC_STRUCTS, ATOMIC_MAPS): a list
without them is atomic, as Kubernetes' OpenAPI makes it.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from json.encoder import encode_basestring as _string  # C-accelerated

from google.protobuf.descriptor import FieldDescriptor

FIELD, KEY, VALUE, INDEX = 0, 1, 2, 3

# node kinds
SCALAR, STRUCT, MAP, ATOMIC, ASSOCIATIVE, SET = range(6)

# associative lists (+listType=map) by proto field: their key fields (JSON names)
LIST_KEYS = {
    "meta.v1.ObjectMeta.owner_references": ("uid",),
    "core.v1.NamespaceStatus.conditions": ("type",),
    "core.v1.NodeStatus.conditions": ("type",),
    "core.v1.NodeStatus.addresses": ("type",),
    "core.v1.PodSpec.volumes": ("name",),
    "core.v1.PodSpec.containers": ("name",),
    "core.v1.PodSpec.init_containers": ("name",),
    "core.v1.PodSpec.topology_spread_constraints": ("topologyKey", "whenUnsatisfiable"),
    "core.v1.Container.ports": ("containerPort", "protocol"),
    "core.v1.Container.env": ("name",),
    "core.v1.Container.volume_mounts": ("mountPath",),
    "core.v1.PodStatus.conditions": ("type",),
    "core.v1.ServiceSpec.ports": ("port", "protocol"),
    "core.v1.ServiceStatus.conditions": ("type",),
    "apps.v1.ReplicaSetStatus.conditions": ("type",),
    "apps.v1.DeploymentStatus.conditions": ("type",),
}
# key fields' defaults, as the schema's "default" gives them (a port's protocol)
KEY_DEFAULTS = {"protocol": "TCP"}
# primitive lists with +listType=set
SETS = {"meta.v1.ObjectMeta.finalizers", "discovery.v1.Endpoint.addresses"}
# +structType=atomic / +mapType=atomic
ATOMIC_STRUCTS = {"meta.v1.LabelSelector", "core.v1.NodeSelector", "core.v1.NodeSelectorTerm",
                  "meta.v1.ObjectReference"}
ATOMIC_MAPS = {"core.v1.ServiceSpec.selector"}
# struct fields that are Go values, not pointers, in k8s.io/api (by JSON name): Go's empty
# object already has them, so an update that fills one in does not add the struct itself;
# one that adds a pointer struct (rollingUpdate, securityContext, ...) owns it (".")
VALUE_STRUCTS = {"metadata", "spec", "status", "template", "strategy", "resources", "nodeInfo",
                 "daemonEndpoints", "kubeletEndpoint", "state", "lastState", "loadBalancer",
                 "involvedObject", "source", "conditions"}
# lists without omitempty in k8s.io/api: Go writes them (null) wherever their parent is
ALWAYS_LISTS = {"core.v1.PodSpec.containers", "discovery.v1.EndpointSlice.endpoints",
                "discovery.v1.Endpoint.addresses"}


@dataclass(frozen=True)
class Node:
    kind: int
    desc: object = None          # the message of a struct, or of an associative list's items
    keys: tuple = ()             # an associative list's key fields
    member: bool = True          # an update that adds or removes it adds or removes its path
    always: bool = False         # Go's JSON has it wherever its parent is (a value struct, a list
                                 # without omitempty): our JSON leaving it out is not its absence


@functools.cache
def _node(field: FieldDescriptor) -> Node:
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        return Node(ATOMIC if field.full_name in ATOMIC_MAPS else MAP)
    if field.is_repeated:
        always = field.full_name in ALWAYS_LISTS
        if field.full_name in LIST_KEYS:
            return Node(ASSOCIATIVE, field.message_type, LIST_KEYS[field.full_name], always=always)
        return Node(SET if field.full_name in SETS else ATOMIC, always=always)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name in ATOMIC_STRUCTS or field.message_type.full_name == "meta.v1.FieldsV1":
            return Node(ATOMIC)
        value = field.json_name in VALUE_STRUCTS
        return Node(STRUCT, field.message_type, member=not value, always=value)
    return Node(SCALAR)


@functools.cache
def fields_of(desc) -> dict[str, Node]:
    """A message's fields by JSON name."""
    return {f.json_name: _node(f) for f in desc.fields}


@functools.cache
def _always_fields(desc) -> tuple:
    return tuple((name, node) for name, node in fields_of(desc).items() if node.always)


def _written(node: Node, value, parent_exists: bool):
    """The value as Go's JSON has it: an absent value struct is {}, an absent list
    without omitempty an empty one (null), wherever the parent is."""
    if value is None and parent_exists and node.always:
        return {} if node.kind == STRUCT else []
    return value


def canonical(value) -> str:
    """JSON with sorted keys and no spaces, as path elements hold keys and values
    (strings and numbers, the usual ones, without json.dumps: this runs per list item)."""
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict) and all(isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))
                                       for v in value.values()):
        return "{" + ",".join(f"{_string(k)}:{canonical(value[k])}" for k in sorted(value)) + "}"
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_element(node: Node, item) -> tuple:
    """The path element of an associative list's item; ValueError when a key field is missing."""
    if not isinstance(item, dict):
        raise ValueError(f"expected an object with key fields {list(node.keys)}")
    key = {}
    for k in node.keys:
        v = item.get(k, KEY_DEFAULTS.get(k))
        if v is None:
            raise ValueError(f'associative list with keys has an element that omits key field "{k}"')
        key[k] = v
    return (KEY, canonical(key))


def _item_elements(node: Node, items: list) -> list[tuple]:
    """Each item's path element, in order, first occurrence of a duplicate only."""
    out, seen = [], set()
    for i, item in enumerate(items):
        if node.kind == ASSOCIATIVE:
            pe = key_element(node, item)
        elif node.kind == SET:
            pe = (VALUE, canonical(item))
        else:
            pe = (INDEX, i)
        if pe not in seen:
            seen.add(pe)
            out.append((pe, item))
    return out


# ---- the set of an applied configuration (typed ToFieldSet) ----

def field_set(obj: dict, desc) -> set:
    """The paths an applied configuration sets: every scalar and atomic value,
    every map entry and list item; struct nodes only through their fields.
    Null values count as absent."""
    out: set = set()
    _struct_set(obj, desc, (), out)
    return out


def _struct_set(obj, desc, path: tuple, out: set) -> None:
    fields = fields_of(desc)
    for key, value in obj.items():
        node = fields.get(key)
        if node is None or value is None:
            continue
        _value_set(value, node, path + ((FIELD, key),), out)


def _value_set(value, node: Node, path: tuple, out: set) -> None:
    kind = node.kind
    if kind in (SCALAR, ATOMIC):
        out.add(path)
    elif kind == STRUCT:
        if isinstance(value, dict):
            _struct_set(value, node.desc, path, out)
        else:
            out.add(path)
    elif kind == MAP:
        if isinstance(value, dict):
            for k, v in value.items():
                if v is not None:
                    out.add(path + ((FIELD, k),))
        else:
            out.add(path)
    elif isinstance(value, list):
        for pe, item in _item_elements(node, value):
            out.add(path + (pe,))
            if kind == ASSOCIATIVE and isinstance(item, dict):
                _struct_set(item, node.desc, path + (pe,), out)
    else:
        out.add(path)


# ---- comparison (typed Compare) ----

@dataclass
class Comparison:
    added: set
    modified: set
    removed: set

    def changed(self) -> bool:
        return bool(self.added or self.modified or self.removed)


def same_scalar(a, b) -> bool:
    """Equal as Kubernetes' typed values are: a number and its decimal text are
    the same value (IntOrString, quantities and int64 fields are accepted both ways)."""
    if a == b and type(a) is type(b):
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b and isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, (int, float, str)) and isinstance(b, (int, float, str)):
        return str(a) == str(b) or a == b
    return a == b


def compare(old: dict | None, new: dict | None, desc) -> Comparison:
    """What changed from ``old`` to ``new``: leaves (scalars, atomic values,
    empty maps and lists) added, modified or removed, and the map entries and
    list items that appeared or went."""
    result = Comparison(set(), set(), set())
    _compare_struct(old or {}, new or {}, desc, (), result)
    return result


def _compare_struct(a: dict | None, b: dict | None, desc, path: tuple, r: Comparison) -> None:
    """``a``/``b`` None: the struct is not there on that side."""
    fields = fields_of(desc)
    keys = (a or {}).keys() | (b or {}).keys()
    for key in keys:
        node = fields.get(key)
        if node is None:
            continue
        va = _written(node, a.get(key) if a is not None else None, a is not None)
        vb = _written(node, b.get(key) if b is not None else None, b is not None)
        _compare_value(va, vb, node, path + ((FIELD, key),), r)
    if (a is None) != (b is None):  # a struct that came or went: what Go's JSON had in it too
        for key, node in _always_fields(desc):
            if key not in keys:
                va, vb = _written(node, None, a is not None), _written(node, None, b is not None)
                _compare_value(va, vb, node, path + ((FIELD, key),), r)


def _leaf(a, b, path: tuple, r: Comparison) -> None:
    if a is None and b is None:
        return
    if a is None:
        r.added.add(path)
    elif b is None:
        r.removed.add(path)
    elif not (same_scalar(a, b) if not isinstance(a, (dict, list)) else a == b):
        r.modified.add(path)


def _compare_value(a, b, node: Node, path: tuple, r: Comparison) -> None:
    kind = node.kind
    if kind in (SCALAR, ATOMIC) or (not a and not b):
        _leaf(a, b, path, r)
        return
    container = dict if kind in (STRUCT, MAP) else list
    if (a is not None and not isinstance(a, container)) or (b is not None and not isinstance(b, container)):
        _leaf(a, b, path, r)
        return
    if node.member:  # a map, a list, a pointer struct: its own path appears or goes too
        if a is None:
            r.added.add(path)
        elif b is None:
            r.removed.add(path)
    if kind == STRUCT:
        _compare_struct(a, b, node.desc, path, r)
    elif kind == MAP:
        a, b = a or {}, b or {}
        for k in a.keys() | b.keys():
            _leaf(a.get(k), b.get(k), path + ((FIELD, k),), r)
    else:
        old = dict(_item_elements(node, a or []))
        new = dict(_item_elements(node, b or []))
        for pe in old.keys() | new.keys():
            p = path + (pe,)
            x, y = old.get(pe), new.get(pe)
            if kind == ASSOCIATIVE:
                if x is None:
                    r.added.add(p)
                elif y is None:
                    r.removed.add(p)
                _compare_struct(x, y, node.desc, p, r)
            else:
                _leaf(x, y, p, r)


# ---- merge (typed Merge): an applied configuration into the live object ----

def merge(live: dict | None, config: dict, desc) -> dict:
    """``config`` merged into ``live`` (neither changed): structs and maps merge
    field by field, associative and set lists item by item (the configuration's
    order first, live items it does not mention kept in place), anything else
    is replaced by the configuration's value."""
    return _merge_struct(live or {}, config, desc)


def _merge_struct(live: dict, config: dict, desc) -> dict:
    fields = fields_of(desc)
    out = dict(live)
    for key, value in config.items():
        if value is None:
            continue
        node = fields.get(key)
        out[key] = copy.deepcopy(value) if node is None else _merge_value(live.get(key), value, node)
    return out


def _merge_value(live, config, node: Node):
    kind = node.kind
    if kind == STRUCT and isinstance(live, dict) and isinstance(config, dict):
        return _merge_struct(live, config, node.desc)
    if kind == MAP and isinstance(live, dict) and isinstance(config, dict):
        out = dict(live)
        out.update({k: copy.deepcopy(v) for k, v in config.items() if v is not None})
        return out
    if kind in (ASSOCIATIVE, SET) and isinstance(live, list) and isinstance(config, list):
        return _merge_list(live, config, node)
    if kind == STRUCT and isinstance(config, dict):
        return _merge_struct({}, config, node.desc)
    return copy.deepcopy(config)


def _merge_list(live: list, config: list, node: Node) -> list:
    lhs = _item_elements(node, live)
    rhs = _item_elements(node, config)
    left, right = dict(lhs), dict(rhs)
    shared = [pe for pe, _ in rhs if pe in left]
    next_shared = shared.pop(0) if shared else None

    def merged(pe):
        if node.kind == ASSOCIATIVE and pe in left:
            return _merge_struct(left[pe], right[pe], node.desc)
        return copy.deepcopy(right[pe])

    out, li, ri = [], 0, 0
    while li < len(lhs) or ri < len(rhs):
        if li < len(lhs) and ri < len(rhs):
            pe = lhs[li][0]
            if pe == rhs[ri][0]:
                out.append(merged(pe))
                li += 1
                ri += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if pe in right and next_shared is not None and next_shared != pe:
                li += 1
                continue
        if li < len(lhs):
            pe, item = lhs[li]
            if pe not in right:
                out.append(item)
                li += 1
                continue
        if ri < len(rhs):
            pe = rhs[ri][0]
            out.append(merged(pe))
            ri += 1
            if next_shared == pe:
                next_shared = shared.pop(0) if shared else None
    return out


# ---- removal of paths from an object ----

def remove(obj: dict, path: tuple, desc) -> None:
    """Removes the node at ``path`` from ``obj`` (in place); nothing when it is not there."""
    parent, node, container_desc = obj, None, desc
    for depth, pe in enumerate(path):
        last = depth == len(path) - 1
        if pe[0] == FIELD:
            if not isinstance(parent, dict):
                return
            if last:
                parent.pop(pe[1], None)
                return
            child = parent.get(pe[1])
            if container_desc is not None:
                node = fields_of(container_desc).get(pe[1])
                if node is None:
                    return
                container_desc = node.desc if node.kind == STRUCT else None
            else:
                node = Node(SCALAR)  # a map's value
            parent = child
        else:
            if not isinstance(parent, list) or node is None:
                return
            at = next((i for i, (e, _) in enumerate(_indexed(node, parent)) if e == pe), None)
            if at is None:
                return
            if last:
                parent.pop(at)
                return
            parent = parent[at]
            container_desc = node.desc if node.kind == ASSOCIATIVE else None


def _indexed(node: Node, items: list):
    for i, item in enumerate(items):
        try:
            if node.kind == ASSOCIATIVE:
                yield key_element(node, item), item
            elif node.kind == SET:
                yield (VALUE, canonical(item)), item
            else:
                yield (INDEX, i), item
        except ValueError:
            yield None, item


# ---- sets: prefixes, FieldsV1, text ----

def under(path: tuple, prefixes) -> bool:
    """``path`` is one of ``prefixes`` or below one."""
    return any(path[:len(p)] == p for p in prefixes)


def is_key(path: tuple) -> bool:
    """``path`` is a key field of an associative list's item, which stays while
    the item does (the item's own path takes it away)."""
    return (len(path) >= 2 and path[-2][0] == KEY and path[-1][0] == FIELD
            and path[-1][1] in json.loads(path[-2][1]))


def has_descendant(path: tuple, paths: set) -> bool:
    n = len(path)
    return any(len(p) > n and p[:n] == path for p in paths)


def element_text(pe: tuple) -> str:
    kind, payload = pe
    return ("f:", "k:", "v:", "i:")[kind] + str(payload)


@functools.lru_cache(maxsize=8192)
def parse_element(text: str) -> tuple | None:
    prefix, _, rest = text.partition(":")
    if prefix == "f":
        return (FIELD, rest)
    if prefix == "k":
        return (KEY, canonical(json.loads(rest)))
    if prefix == "v":
        return (VALUE, canonical(json.loads(rest)))
    if prefix == "i":
        return (INDEX, int(rest))
    return None  # a kind of element a later version knows: dropped, as upstream does


def to_fields_v1(paths: set) -> dict:
    """The set as FieldsV1 JSON: a node's children by element text, ``{}`` for a
    member without children, and ``".": {}`` for a member with children."""
    tree: dict = {}
    members: set = set()
    for path in paths:
        node = tree
        for pe in path:
            node = node.setdefault(pe, {})
        members.add(path)

    def emit(node: dict, prefix: tuple) -> dict:
        out = {}
        for pe in sorted(node):
            child = prefix + (pe,)
            out[element_text(pe)] = emit(node[pe], child)
        if prefix in members and out:
            out["."] = {}
        return out

    return emit(tree, ())


def from_fields_v1(fields: dict) -> set:
    """A FieldsV1 JSON object as a set of paths; ValueError when malformed."""
    out: set = set()

    def walk(node, prefix: tuple) -> None:
        if not isinstance(node, dict):
            raise ValueError(f"FieldsV1: expected an object at {path_text(prefix) or 'the top'}")
        if prefix and (not node or "." in node):
            out.add(prefix)
        for text, child in node.items():
            if text == ".":
                continue
            pe = parse_element(text)
            if pe is not None:
                walk(child, prefix + (pe,))

    try:
        walk(fields, ())
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"FieldsV1: {e}") from None
    return out


def _value_text(value) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return canonical(value)


def path_text(path: tuple) -> str:
    """A path as upstream's Path.String writes it: ``.spec.containers[name="c"].image``."""
    parts = []
    for kind, payload in path:
        if kind == FIELD:
            parts.append("." + payload)
        elif kind == KEY:
            fields = json.loads(payload)
            parts.append("[" + ",".join(f"{k}={_value_text(v)}" for k, v in sorted(fields.items())) + "]")
        elif kind == VALUE:
            parts.append(f"[={_value_text(json.loads(payload))}]")
        else:
            parts.append(f"[{payload}]")
    return "".join(parts)
