"""What every kind's validation shares: Kubernetes' field errors (path, reason, detail) and
the checks of plain values (ports, counts, enums, labels); string syntax is ``syntax``'s."""

from __future__ import annotations

from apiserver import errors
from apiserver.selectors import quote
from apiserver.syntax import (
    is_integer,
    label_value_errors,
    port_name_errors,
    qualified_name_errors,
)

# ======================================================================
# field errors
# ======================================================================

class _Raw(str):
    """A value already in Kubernetes' printed form (a Go map or struct)."""


def _show(value) -> str:
    """A value as Kubernetes' field errors print it."""
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if value is None:
        return "null"
    return str(value)


class FieldErrors:
    """Collects (field, reason, detail) causes with Kubernetes' wording."""

    def __init__(self) -> None:
        self.causes: list[tuple[str, str, str]] = []

    def add(self, path: str, reason: str, detail: str) -> None:
        self.causes.append((path, reason, detail))

    def required(self, path: str, detail: str = "") -> None:
        self.add(path, "FieldValueRequired", "Required value" + (f": {detail}" if detail else ""))

    def invalid(self, path: str, value, detail: str = "") -> None:
        self.add(path, "FieldValueInvalid",
                 f"Invalid value: {_show(value)}" + (f": {detail}" if detail else ""))

    def not_supported(self, path: str, value, supported) -> None:
        self.add(path, "FieldValueNotSupported", f"Unsupported value: {_show(value)}: supported "
                 f"values: {', '.join(quote(s) for s in supported)}")

    def duplicate(self, path: str, value) -> None:
        self.add(path, "FieldValueDuplicate", f"Duplicate value: {_show(value)}")

    def forbidden(self, path: str, detail: str) -> None:
        self.add(path, "FieldValueForbidden", f"Forbidden: {detail}")

    def not_found(self, path: str, value) -> None:
        self.add(path, "FieldValueNotFound", f"Not found: {_show(value)}")

    def too_long(self, path: str, limit: int) -> None:
        self.add(path, "FieldValueTooLong", f"Too long: must have at most {limit} bytes")

    def each(self, path: str, value, messages: list[str]) -> None:
        for m in messages:
            self.invalid(path, value, m)

    def raise_if_any(self, kind: str, name: str) -> None:
        if self.causes:
            raise errors.invalid(kind, name, self.causes)


# ======================================================================
# values: ports, counts, enums, labels (string syntax is in ``syntax``)
# ======================================================================

PORT_RANGE_MESSAGE = "must be between 1 and 65535, inclusive"
NON_NEGATIVE_MESSAGE = "must be greater than or equal to 0"
FILE_MODE_MESSAGE = "must be a number between 0 and 0777 (octal), both inclusive"
ID_RANGE_MESSAGE = "must be between 0 and 2147483647, inclusive"
_HTTP_HEADER_NAME_MESSAGE = ("a valid HTTP header must consist of alphanumeric characters or '-' "
                             "(e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')")


def _port_number_or_name(errs: FieldErrors, path: str, value: str) -> None:
    """An IntOrString port: a number in 1-65535 or an IANA service name."""
    if is_integer(value):
        if not 1 <= int(value) <= 65535:
            errs.invalid(path, int(value), PORT_RANGE_MESSAGE)
    elif not value:
        errs.required(path)
    else:
        errs.each(path, value, port_name_errors(value))


def _port(errs: FieldErrors, path: str, value: int, *, allow_zero: bool = False) -> None:
    if allow_zero and value == 0:
        return
    if not 1 <= value <= 65535:
        errs.invalid(path, value, PORT_RANGE_MESSAGE)


def _non_negative(errs: FieldErrors, path: str, value: int) -> None:
    if value < 0:
        errs.invalid(path, value, NON_NEGATIVE_MESSAGE)


def _enum(errs: FieldErrors, path: str, value: str, supported, *, required: bool = True) -> None:
    if not value:
        if required:
            errs.required(path)
    elif value not in supported:
        errs.not_supported(path, value, supported)


def _labels(errs: FieldErrors, path: str, labels) -> None:
    for key in sorted(labels):
        errs.each(path, key, qualified_name_errors(key))
        errs.each(path, labels[key], label_value_errors(labels[key]))


