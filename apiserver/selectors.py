"""Kubernetes label and field selectors: parse, match, print.

Label selectors use Kubernetes' string syntax (``app=web,tier!=db``,
``env in (a,b)``, ``!legacy``, ``version>2``) or a ``meta.v1.LabelSelector``
message; field selectors are ``field=value`` terms over the few fields each
resource exposes (metadata.name, spec.nodeName, ...). Requirements are ANDed.
Label keys and values must pass ``syntax``'s qualified-name and label-value rules.

A selector with no requirements matches everything; whether a *missing*
selector message means "nothing" is the caller's decision (Kubernetes: a nil
metav1.LabelSelector selects nothing, an empty one everything).

Bad syntax raises errors.bad_request with Kubernetes' wording; a bad
``meta.v1.LabelSelector`` message raises errors.invalid-style causes via
``LabelSelectorError``, which carries field paths for the caller to prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from apiserver import errors
from apiserver.errors import ApiError
from apiserver.limits import MAX_SELECTOR_LENGTH
from apiserver.resources import Resource
from apiserver.syntax import is_integer, label_value_errors, qualified_name_errors

# ---- printing values in messages ----

def quote(value: str) -> str:
    """A string as Go's %q shows it in Kubernetes' messages."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


# ---- label selectors ----

# canonical operators; "==" parses to "=" (Kubernetes treats them alike)
EQUALS, NOT_EQUALS, IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GT, LT = (
    "=", "!=", "in", "notin", "exists", "!", "gt", "lt")
_SET_OPERATORS = (IN, NOT_IN)
_PROTO_OPERATORS = {"In": IN, "NotIn": NOT_IN, "Exists": EXISTS, "DoesNotExist": DOES_NOT_EXIST}


@dataclass(frozen=True, order=True)
class Requirement:
    """One ANDed term: ``key`` related to ``values`` (sorted, unique) by ``operator``."""
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == EXISTS:
            return present
        if self.operator == DOES_NOT_EXIST:
            return not present
        if self.operator in (EQUALS, IN):
            return present and labels[self.key] in self.values
        if self.operator in (NOT_EQUALS, NOT_IN):
            return not present or labels[self.key] not in self.values
        # gt / lt: both sides integers; a non-integer label never matches
        if not present:
            return False
        try:
            have = int(labels[self.key])
        except ValueError:
            return False
        want = int(self.values[0])
        return have > want if self.operator == GT else have < want

    def __str__(self) -> str:
        if self.operator == EXISTS:
            return self.key
        if self.operator == DOES_NOT_EXIST:
            return "!" + self.key
        if self.operator in _SET_OPERATORS:
            return f"{self.key} {self.operator} ({','.join(self.values)})"
        symbol = {EQUALS: "=", NOT_EQUALS: "!=", GT: ">", LT: "<"}[self.operator]
        return f"{self.key}{symbol}{self.values[0]}"


class LabelSelectorError(ValueError):
    """A bad requirement; ``causes`` are (field path relative to the selector,
    Kubernetes field-error reason, detail)."""

    def __init__(self, causes: list[tuple[str, str, str]]) -> None:
        super().__init__(", ".join(f"{f}: {d}" if f else d for f, _, d in causes))
        self.causes = causes


def _requirement(key: str, operator: str, values) -> Requirement:
    """A checked Requirement; raises LabelSelectorError (paths "key", "values")."""
    values = tuple(sorted(set(values)))
    causes: list[tuple[str, str, str]] = []
    for msg in qualified_name_errors(key):
        causes.append(("key", "FieldValueInvalid", f"Invalid value: {quote(key)}: {msg}"))
    if operator in (EQUALS, NOT_EQUALS) and len(values) != 1:
        causes.append(("values", "FieldValueInvalid",
                       "Invalid value: exactly one value is required for '=', '==' and '!='"))
    elif operator in _SET_OPERATORS and not values:
        causes.append(("values", "FieldValueRequired",
                       "Required value: must be specified when `operator` is 'In' or 'NotIn'"))
    elif operator in (EXISTS, DOES_NOT_EXIST) and values:
        causes.append(("values", "FieldValueForbidden",
                       "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
    elif operator in (GT, LT):
        if len(values) != 1:
            causes.append(("values", "FieldValueInvalid",
                           "Invalid value: exactly one value is required for 'gt' and 'lt'"))
        elif not is_integer(values[0]):
            causes.append(("values", "FieldValueInvalid",
                           (f"Invalid value: {quote(values[0])}: for 'gt', 'lt' operators, "
                            "the value must be an integer")))
    for i, v in enumerate(values):
        for msg in label_value_errors(v):
            causes.append((f"values[{i}]", "FieldValueInvalid", f"Invalid value: {quote(v)}: {msg}"))
    if causes:
        raise LabelSelectorError(causes)
    return Requirement(key, operator, values)


@dataclass(frozen=True)
class LabelSelector:
    """ANDed requirements, sorted by key (as Kubernetes sorts them); none =
    everything."""
    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the selector has no requirements and so matches every object."""
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def requires_exact(self, key: str) -> str | None:
        """The value ``key`` must equal (an '=' or single-value 'in'), or None."""
        for r in self.requirements:
            if r.key == key and r.operator in (EQUALS, IN) and len(r.values) == 1:
                return r.values[0]
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    @classmethod
    def of(cls, requirements) -> LabelSelector:
        return cls(tuple(sorted(set(requirements))))

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> LabelSelector:
        """The selector ``k=v,...`` for a label map (Kubernetes' SelectorFromSet);
        raises LabelSelectorError for bad keys or values."""
        return cls.of(_requirement(k, EQUALS, (v,)) for k, v in labels.items())


EVERYTHING = LabelSelector()


def label_selector_from_proto(sel) -> LabelSelector:
    """A ``meta.v1.LabelSelector`` message as a LabelSelector (an empty message
    gives an empty selector: everything). Raises LabelSelectorError with paths
    relative to the selector ("matchLabels", "matchExpressions[0].operator", ...)."""
    reqs = []
    causes: list[tuple[str, str, str]] = []
    for key in sorted(sel.match_labels):
        try:
            reqs.append(_requirement(key, EQUALS, (sel.match_labels[key],)))
        except LabelSelectorError as e:
            causes.extend(("matchLabels", reason, detail) for _, reason, detail in e.causes)
    for i, expr in enumerate(sel.match_expressions):
        path = f"matchExpressions[{i}]"
        op = _PROTO_OPERATORS.get(expr.operator)
        if op is None:
            causes.append((f"{path}.operator", "FieldValueNotSupported",
                           (f"Unsupported value: {quote(expr.operator)}: supported values: "
                            '"In", "NotIn", "Exists", "DoesNotExist"')))
            continue
        try:
            reqs.append(_requirement(expr.key, op, expr.values))
        except LabelSelectorError as e:
            causes.extend((f"{path}.{field}", reason, detail) for field, reason, detail in e.causes)
    if causes:
        raise LabelSelectorError(causes)
    return LabelSelector.of(reqs)


# -- the string syntax: a small lexer and a recursive-descent parser --

_SPECIAL = "!=,()<>"
_KEYWORDS = {"in": "in", "notin": "notin"}


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens; kinds: "id", "in", "notin", the operator symbols,
    ",", "(", ")", and "end"."""
    out = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in _SPECIAL:
            two = text[i:i + 2]
            if two in ("!=", "=="):
                out.append((two, two))
                i += 2
            else:
                out.append((ch, ch))
                i += 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _SPECIAL:
                j += 1
            word = text[i:j]
            out.append((_KEYWORDS.get(word, "id"), word))
            i = j
    out.append(("end", ""))
    return out


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.pos]

    def take(self) -> tuple[str, str]:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    @staticmethod
    def fail(found: str, expected: str) -> ApiError:
        return errors.bad_request(f"unable to parse requirement: found '{found}', expected: {expected}")

    def selector(self) -> LabelSelector:
        reqs = []
        if self.peek()[0] == "end":
            return EVERYTHING
        while True:
            reqs.append(self.requirement())
            kind, text = self.take()
            if kind == "end":
                return LabelSelector.of(reqs)
            if kind != ",":
                raise self.fail(text, "',' or 'end of string'")

    def requirement(self) -> Requirement:
        kind, text = self.take()
        negated = kind == "!"
        if negated:
            kind, text = self.take()
        if kind not in ("id", "in", "notin"):  # keywords are valid keys in key position
            raise self.fail(text, "identifier" if negated else "!, identifier, or 'end of string'")
        key = text
        if negated:
            return self.checked(key, DOES_NOT_EXIST, ())
        kind, text = self.peek()
        if kind in ("end", ","):
            return self.checked(key, EXISTS, ())
        self.take()
        if kind in ("=", "==", "!="):
            return self.checked(key, NOT_EQUALS if kind == "!=" else EQUALS, (self.single_value(),))
        if kind in (">", "<"):
            return self.checked(key, GT if kind == ">" else LT, (self.single_value(),))
        if kind in ("in", "notin"):
            return self.checked(key, kind, self.value_set())
        raise self.fail(text, "=, !=, ==, in, notin, gt, lt")

    def single_value(self) -> str:
        kind, text = self.peek()
        if kind in ("end", ","):
            return ""  # "a=" selects the empty value, as in Kubernetes
        if kind not in ("id", "in", "notin"):
            raise self.fail(text, "identifier")
        self.take()
        return text

    def value_set(self) -> tuple[str, ...]:
        kind, text = self.take()
        if kind != "(":
            raise self.fail(text, "'('")
        values = []
        expect_value = True
        while True:
            kind, text = self.take()
            if kind == ")":
                if expect_value:
                    values.append("")
                return tuple(values)
            if kind == ",":
                if expect_value:
                    values.append("")
                expect_value = True
            elif kind in ("id", "in", "notin") and expect_value:
                values.append(text)
                expect_value = False
            else:
                raise self.fail(text, "',', ')' or identifier")

    @staticmethod
    def checked(key: str, op: str, values) -> Requirement:
        try:
            return _requirement(key, op, values)
        except LabelSelectorError as e:
            detail = "; ".join(d for _, _, d in e.causes)
            raise errors.bad_request(f"unable to parse requirement: {detail}") from None


def parse_label_selector(text: str) -> LabelSelector:
    """A label selector in Kubernetes' string syntax; "" selects everything.
    Raises errors.bad_request ("unable to parse requirement: ...")."""
    return _LabelParser(text).selector()


# ---- field selectors ----

def _flag(value: bool) -> str:
    return "true" if value else "false"


# the fields each resource can be selected by, beyond metadata.name and
# metadata.namespace (Kubernetes' per-kind field label conversion funcs)
_FIELDS: dict[str, dict[str, Callable]] = {
    "pods": {
        "spec.nodeName": lambda m: m.spec.node_name,
        "spec.restartPolicy": lambda m: m.spec.restart_policy,
        "spec.schedulerName": lambda m: m.spec.scheduler_name,
        "spec.serviceAccountName": lambda m: m.spec.service_account_name,
        "spec.hostNetwork": lambda m: _flag(m.spec.host_network),
        "status.phase": lambda m: m.status.phase,
        "status.podIP": lambda m: m.status.pod_ip,
        "status.nominatedNodeName": lambda m: m.status.nominated_node_name,
    },
    "nodes": {"spec.unschedulable": lambda m: _flag(m.spec.unschedulable)},
    "namespaces": {"status.phase": lambda m: m.status.phase},
    "events": {
        "involvedObject.kind": lambda m: m.involved_object.kind,
        "involvedObject.namespace": lambda m: m.involved_object.namespace,
        "involvedObject.name": lambda m: m.involved_object.name,
        "involvedObject.uid": lambda m: m.involved_object.uid,
        "involvedObject.apiVersion": lambda m: m.involved_object.api_version,
        "involvedObject.resourceVersion": lambda m: m.involved_object.resource_version,
        "involvedObject.fieldPath": lambda m: m.involved_object.field_path,
        "reason": lambda m: m.reason,
        "reportingComponent": lambda m: m.reporting_component,
        "source": lambda m: m.source.component,
        "type": lambda m: m.type,
    },
    "secrets": {"type": lambda m: m.type},
    "replicasets": {"status.replicas": lambda m: str(m.status.replicas)},
}
_COMMON_FIELDS: dict[str, Callable] = {
    "metadata.name": lambda m: m.metadata.name,
    "metadata.namespace": lambda m: m.metadata.namespace,
}


def supported_fields(resource: Resource) -> tuple[str, ...]:
    return (*_COMMON_FIELDS, *_FIELDS.get(resource.name, {}))


def field_getter(resource: Resource, field: str) -> Callable | None:
    """The function reading ``field`` of a typed message as a string, or None."""
    return _COMMON_FIELDS.get(field) or _FIELDS.get(resource.name, {}).get(field)


@dataclass(frozen=True, order=True)
class FieldRequirement:
    field: str
    operator: str  # "=" or "!="
    value: str

    def __str__(self) -> str:
        return f"{self.field}{self.operator}{_escape_field_value(self.value)}"


@dataclass(frozen=True)
class FieldSelector:
    """ANDed ``field=value`` / ``field!=value`` terms over one resource's fields."""
    resource: Resource
    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, msg) -> bool:
        for r in self.requirements:
            have = field_getter(self.resource, r.field)(msg)
            if (have == r.value) != (r.operator == "="):
                return False
        return True

    def requires_exact(self, field: str) -> str | None:
        """The value ``field`` must equal, or None (Kubernetes' RequiresExactMatch)."""
        for r in self.requirements:
            if r.field == field and r.operator == "=":
                return r.value
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


_FIELD_ESCAPES = {"\\": "\\\\", ",": "\\,", "=": "\\="}


def _escape_field_value(value: str) -> str:
    return "".join(_FIELD_ESCAPES.get(ch, ch) for ch in value)


def _split_unescaped(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` characters not preceded by a backslash escape."""
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape_field_value(text: str, term: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text) or text[i + 1] not in "\\,=":
                raise errors.bad_request(f"invalid field selector: '{term}': invalid escape sequence")
            out.append(text[i + 1])
            i += 2
        elif ch in ",=":
            raise errors.bad_request(
                f"invalid field selector: '{term}': unescaped '{ch}' in value")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_field_selector(text: str, resource: Resource) -> FieldSelector:
    """A field selector (``a=b``, ``a==b``, ``a!=b``, comma = AND; ``\\``
    escapes ``,``, ``=`` and ``\\`` in values; field names are trimmed,
    values are not) over ``resource``'s fields.
    Raises errors.bad_request for bad syntax or an unsupported field."""
    reqs = []
    if text.strip():
        for term in _split_unescaped(text, ","):
            if term:
                reqs.append(_field_term(term, text, resource))
    return FieldSelector(resource, tuple(sorted(set(reqs))))


def _field_term(term: str, text: str, resource: Resource) -> FieldRequirement:
    # the earliest operator wins; at one position the longer one ("!=", "==")
    found = [(idx, -len(symbol), symbol) for symbol in ("!=", "==", "=")
             if (idx := _find_unescaped(term, symbol)) >= 0]
    if not found:
        raise errors.bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
    idx, _, symbol = min(found)
    op = "!=" if symbol == "!=" else "="
    field = term[:idx].strip()
    value = _unescape_field_value(term[idx + len(symbol):], term)
    if field_getter(resource, field) is None:
        raise errors.bad_request(f"field label not supported: {field}")
    return FieldRequirement(field, op, value)


def _find_unescaped(term: str, symbol: str) -> int:
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        if term.startswith(symbol, i):
            return i
        i += 1
    return -1


# ---- both ----

@dataclass(frozen=True)
class Predicate:
    """What a list or watch selects: labels AND fields; None = no constraint."""
    label: LabelSelector | None = None
    field: FieldSelector | None = None

    @property
    def everything(self) -> bool:
        return (self.label is None or self.label.empty) and (self.field is None or self.field.empty)

    def matches(self, msg) -> bool:
        if self.label is not None and not self.label.matches(msg.metadata.labels):
            return False
        return self.field is None or self.field.matches(msg)


def make_predicate(resource: Resource, label_selector: str | None = "",
                   field_selector: str | None = "") -> Predicate:
    """The Predicate of a list/watch request's selector strings ("" or None = any).
    Raises errors.bad_request, also for a selector over MAX_SELECTOR_LENGTH."""
    for what, text in (("label", label_selector), ("field", field_selector)):
        if text and len(text) > MAX_SELECTOR_LENGTH:
            raise errors.bad_request(f"{what} selector too long: {len(text)} characters, "
                                     f"the limit is {MAX_SELECTOR_LENGTH}")
    label = parse_label_selector(label_selector) if label_selector else None
    field = parse_field_selector(field_selector, resource) if field_selector else None
    return Predicate(label, field)
