"""JSON <-> protobuf as etcd 3.4's gRPC gateway (grpc-gateway v1 with
golang/protobuf's jsonpb) reads and writes it.

Written: proto field names (`cluster_id`, `kvs`, `ID`, `dbSize`), 64-bit
integers as strings, bytes in standard base64, enums by name, fields at
their default left out. Read: a JSON object whose fields go by their proto
or lowerCamel names, unknown fields ignored, null as absent, 64-bit integers
as numbers or strings, enums by name or number; an empty body is an empty
request. What jsonpb refuses is refused with Go's own words
(`invalid character 'b' looking for beginning of object key string`,
`json: cannot unmarshal number 1.5 into Go value of type int64`,
`illegal base64 data at input byte 0`): clients and scripts that look at
the message see what etcd says.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor as FD


class JSONError(ValueError):
    """A request body jsonpb would not decode; str() is Go's message."""


# --- writing ----------------------------------------------------------------

# Go's encoder escapes these (HTML-safe output); Python's leaves them as they are
_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
               ("\u2029", "\\u2029"))


def dumps(obj) -> bytes:
    """Compact JSON, escaped as Go escapes it."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in _GO_ESCAPES:
        if raw in text:
            text = text.replace(raw, escaped)
    return text.encode()


def to_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def message_json(message) -> bytes:
    return dumps(to_dict(message))


# --- reading ----------------------------------------------------------------


class _Float(str):
    """A JSON number with a fraction or exponent, kept as written (Go's
    errors quote it so)."""


_DECODER = json.JSONDecoder(parse_float=_Float, parse_constant=lambda s: _Float(s))
_SPACE = re.compile(r"[ \t\n\r]*")


def split_values(text: str, pos: int = 0):
    """(value, end) of the JSON value starting at or after `pos`, or None if
    only whitespace is left; JSONError (Go's words) for a malformed or
    truncated one. Streamed requests are values one after another."""
    pos = _SPACE.match(text, pos).end()
    if pos >= len(text):
        return None
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as err:
        raise JSONError(_go_syntax_error(text, err)) from None


def parse(body: bytes, cls):
    """The request of type `cls` in `body` (one JSON value; what follows it is
    not read, as Go's decoder does not)."""
    message = cls()
    found = split_values(body.decode("utf-8", "replace"))
    if found is not None:
        fill(message, found[0])
    return message


def fill(message, value) -> None:
    """Set `message`'s fields from the decoded JSON `value`."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise JSONError(f"json: cannot unmarshal {_kind(value)} into Go value of type map[string]json.RawMessage")
    fields = message.DESCRIPTOR.fields_by_name
    camel = message.DESCRIPTOR.fields_by_camelcase_name
    for name, item in value.items():
        field = fields.get(name) or camel.get(name)
        if field is None or item is None:
            continue
        if field.is_repeated:
            if not isinstance(item, list):
                raise JSONError(f"json: cannot unmarshal {_kind(item)} into Go value of type []json.RawMessage")
            target = getattr(message, field.name)
            for element in item:
                if field.type == FD.TYPE_MESSAGE:
                    fill(target.add(), element)
                else:
                    target.append(_scalar(field, element))
        elif field.type == FD.TYPE_MESSAGE:
            sub = getattr(message, field.name)
            sub.SetInParent()
            fill(sub, item)
        else:
            setattr(message, field.name, _scalar(field, item))


_INT_TYPES = {FD.TYPE_INT64: ("int64", -(1 << 63), (1 << 63) - 1),
              FD.TYPE_SINT64: ("int64", -(1 << 63), (1 << 63) - 1),
              FD.TYPE_SFIXED64: ("int64", -(1 << 63), (1 << 63) - 1),
              FD.TYPE_UINT64: ("uint64", 0, (1 << 64) - 1),
              FD.TYPE_FIXED64: ("uint64", 0, (1 << 64) - 1),
              FD.TYPE_INT32: ("int32", -(1 << 31), (1 << 31) - 1),
              FD.TYPE_SINT32: ("int32", -(1 << 31), (1 << 31) - 1),
              FD.TYPE_SFIXED32: ("int32", -(1 << 31), (1 << 31) - 1),
              FD.TYPE_UINT32: ("uint32", 0, (1 << 32) - 1),
              FD.TYPE_FIXED32: ("uint32", 0, (1 << 32) - 1)}


def _scalar(field, item):
    t = field.type
    if t in _INT_TYPES:
        return _integer(item, *_INT_TYPES[t])
    if t == FD.TYPE_BYTES:
        if not isinstance(item, str) or isinstance(item, _Float):
            raise JSONError(f"json: cannot unmarshal {_kind(item)} into Go value of type []uint8")
        return _base64(item)
    if t == FD.TYPE_STRING:
        if not isinstance(item, str) or isinstance(item, _Float):
            raise JSONError(f"json: cannot unmarshal {_kind(item)} into Go value of type string")
        return item
    if t == FD.TYPE_BOOL:
        if not isinstance(item, bool):
            raise JSONError(f"json: cannot unmarshal {_kind(item)} into Go value of type bool")
        return item
    if t == FD.TYPE_ENUM:
        enum = field.enum_type
        if isinstance(item, str) and not isinstance(item, _Float):
            number = enum.values_by_name.get(item)
            if number is None:
                go_name = enum.full_name.replace(f"{enum.containing_type.name}.", f"{enum.containing_type.name}_") \
                    if enum.containing_type else enum.full_name
                raise JSONError(f'unknown value "{item}" for enum {go_name}')
            return number.number
        return _integer(item, "int32", -(1 << 31), (1 << 31) - 1)
    raise JSONError(f"json: cannot unmarshal {_kind(item)} into Go value")  # floats: none in etcd's API


def _integer(item, go_type: str, lo: int, hi: int) -> int:
    if isinstance(item, str) and not isinstance(item, _Float):
        # jsonpb takes a quoted number as the number
        text = item
        found = split_values(text)
        if found is None:
            raise JSONError("unexpected end of JSON input")
        item, end = found
        end = _SPACE.match(text, end).end()
        if end < len(text):
            raise JSONError(f"invalid character {_quote_char(text[end])} after top-level value")
    if isinstance(item, bool) or not isinstance(item, (int, _Float)):
        raise JSONError(f"json: cannot unmarshal {_kind(item)} into Go value of type {go_type}")
    if isinstance(item, _Float) or not lo <= item <= hi:
        raise JSONError(f"json: cannot unmarshal number {item} into Go value of type {go_type}")
    return item


_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _base64(text: str) -> bytes:
    """Go's base64.StdEncoding: padded, newlines ignored, the offset of the
    first bad quantum in its error."""
    data = text.replace("\r", "").replace("\n", "").encode("utf-8", "replace")
    for i, c in enumerate(data):
        if c not in _B64:
            if c != ord("="):
                raise JSONError(f"illegal base64 data at input byte {i}")
            break
    if len(data) % 4:
        raise JSONError(f"illegal base64 data at input byte {len(data) - len(data) % 4}")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise JSONError(f"illegal base64 data at input byte {max(0, len(data) - 4)}") from None


def _kind(value) -> str:
    """How Go's json names a JSON value's type in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (_Float, int)):  # _Float before str: it is one
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _quote_char(c: str) -> str:
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    return "'" + json.dumps(c)[1:-1] + "'"


def _inside_array(text: str, pos: int) -> bool:
    """Whether `pos` is in an array rather than an object (the innermost)."""
    stack, in_string, escaped = [], False, False
    for c in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            stack.append(c)
        elif c in "]}" and stack:
            stack.pop()
    return bool(stack) and stack[-1] == "["


def _go_syntax_error(text: str, err: json.JSONDecodeError) -> str:
    """Python's JSONDecodeError in the words of Go's encoding/json."""
    msg, pos = err.msg, err.pos
    if msg.startswith("Unterminated string") or pos >= len(text):
        return "unexpected EOF"
    c = _quote_char(text[pos])
    if msg.startswith("Expecting property name"):
        return f"invalid character {c} looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {c} after object key"
    if msg.startswith("Expecting ','"):
        where = "array element" if _inside_array(text, pos) else "object key:value pair"
        return f"invalid character {c} after {where}"
    if msg.startswith("Invalid control character"):
        return f"invalid character {c} in string literal"
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        return f"invalid character {c} in string escape code"
    return f"invalid character {c} looking for beginning of value"
